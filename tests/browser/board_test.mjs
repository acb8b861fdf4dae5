// The browser test of lattice-todo: headless Chromium (Debian's, /usr/bin/chromium) driven by
// playwright-core opens alice's and bob's pages, adds and votes on items on both, switches bob
// offline, edits on both, switches him back, and checks that both pages show the same board
// (and the one the merge rules predict), then sets a due date and an assignee (schema version 2)
// on one page and waits for the other. Saves a screenshot of each page.
//
// Run by the browser_board test through `scripts/demo.sh --exec`, which starts the relay and
// both devices and sets ALICE_URL and BOB_URL. LATTICE_ARTIFACTS_DIR is where the screenshots
// go; CHROMIUM overrides the browser's path. Exits 0 when every check passed, 1 otherwise.

import {mkdirSync} from 'node:fs';
import path from 'node:path';
import {chromium} from 'playwright-core';

const kTimeoutMs = 20_000;  // for any one wait
const kWholeTestMs = 120_000;

const {ALICE_URL, BOB_URL} = process.env;
const artifacts = process.env.LATTICE_ARTIFACTS_DIR || 'test-artifacts';
if (!ALICE_URL || !BOB_URL) {
  console.error('board_test: ALICE_URL and BOB_URL must be set (run it through scripts/demo.sh --exec)');
  process.exit(1);
}
setTimeout(() => {
  console.error(`board_test: FAILED: still running after ${kWholeTestMs / 1000} s`);
  process.exit(1);
}, kWholeTestMs).unref();

const step = (text) => console.log(`-- ${text}`);

// The board as a page shows it: [title, done, votes] per item, in order.
const readBoard = (page) =>
  page.$$eval('#board li', (items) => items.map((li) => [
    li.querySelector('.title-input').value,
    li.querySelector('.done-toggle').checked,
    Number(li.querySelector('.votes').textContent),
  ]));

const text = async (page, selector) => (await page.textContent(selector)).trim();

// Polls until check(page) returns true; throws naming `what` and the last board otherwise.
async function waitUntil(page, what, check, timeoutMs = kTimeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check(page)) return;
    if (Date.now() > deadline) {
      const name = await text(page, '#device');
      // The device's own account, which the page shows only while it is not live.
      const state = await page.evaluate(async () => {
        try {
          return await (await fetch('/api/state', {signal: AbortSignal.timeout(5_000)})).json();
        } catch (e) {
          return {last_error: `the app did not answer /api/state: ${e}`, pending: '?'};
        }
      });
      throw new Error(`${name}: timed out waiting for ${what}; state ${await text(page, '#sync-state')}, ` +
                      `the app says ${state.state}, last error ${JSON.stringify(state.last_error)}, ` +
                      `pending ${state.pending}, items ${JSON.stringify((state.items || []).map((i) => i.title))}, ` +
                      `board ${JSON.stringify(await readBoard(page))}`);
    }
    await page.waitForTimeout(50);
  }
}

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
const waitForBoard = (page, expected) =>
  waitUntil(page, `board ${JSON.stringify(expected)}`, async (p) => same(await readBoard(p), expected));
const waitForState = (page, state) =>
  waitUntil(page, `sync state ${state}`, async (p) => (await text(p, '#sync-state')) === state);

// By the input's current value (its value attribute does not follow edits).
async function itemByTitle(page, title) {
  const index = (await readBoard(page)).findIndex(([t]) => t === title);
  if (index < 0) throw new Error(`no item '${title}' on ${await text(page, '#device')}'s board`);
  return page.locator('#board li').nth(index);
}
async function add(page, title) {
  await page.fill('#new-title', title);
  await page.click('#add-button');
  await waitUntil(page, `'${title}' to appear`, async (p) => (await readBoard(p)).some(([t]) => t === title));
}
async function vote(page, title) {
  const before = (await readBoard(page)).find(([t]) => t === title)[2];
  await (await itemByTitle(page, title)).locator('.vote-button').click();
  // At least: another device's vote may arrive at the same time.
  await waitUntil(page, `a vote on '${title}'`,
                  async (p) => (await readBoard(p)).find(([t]) => t === title)[2] >= before + 1);
}
async function rename(page, from, to) {
  const title = (await itemByTitle(page, from)).locator('.title-input');
  await title.fill(to);
  await title.press('Enter');
  await waitUntil(page, `'${from}' renamed to '${to}'`, async (p) => (await readBoard(p)).some(([t]) => t === to));
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  timeout: 30_000,
  // Playwright gives the browser a new, empty profile (--user-data-dir) of its own.
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
let alice, bob, failed = false;
mkdirSync(artifacts, {recursive: true});
try {
  alice = await (await browser.newContext({viewport: {width: 900, height: 600}})).newPage();
  bob = await (await browser.newContext({viewport: {width: 900, height: 600}})).newPage();
  alice.setDefaultTimeout(kTimeoutMs);
  bob.setDefaultTimeout(kTimeoutMs);
  for (const page of [alice, bob]) page.on('pageerror', (e) => { failed = true; console.error(`page error: ${e}`); });
  await alice.goto(ALICE_URL);
  await bob.goto(BOB_URL);

  step('both pages show their device and reach the relay');
  if (await text(alice, '#device') !== 'alice' || await text(bob, '#device') !== 'bob')
    throw new Error('the pages do not show their device names');
  await waitForState(alice, 'live');
  await waitForState(bob, 'live');

  step('alice and bob each add an item; each appears on the other page without a reload');
  await add(alice, 'buy milk');
  await add(bob, 'book the venue');
  await waitForBoard(alice, [['buy milk', false, 0], ['book the venue', false, 0]]);
  await waitForBoard(bob, [['buy milk', false, 0], ['book the venue', false, 0]]);

  step('both vote on the venue, bob on the milk too');
  await vote(alice, 'book the venue');
  await vote(bob, 'book the venue');
  await vote(bob, 'buy milk');
  const online = [['buy milk', false, 1], ['book the venue', false, 2]];
  await waitForBoard(alice, online);
  await waitForBoard(bob, online);

  step('bob switches offline; both edit the same items');
  await bob.click('#offline-toggle');
  await waitForState(bob, 'offline');
  await rename(alice, 'buy milk', 'buy oat milk');
  await vote(alice, 'book the venue');
  await vote(bob, 'book the venue');
  await (await itemByTitle(bob, 'book the venue')).locator('.done-toggle').check();
  await add(bob, 'water the plants');
  await waitUntil(bob, 'unsent changes to be counted', async (p) => Number(await text(p, '#pending')) >= 3);
  // Bob's edits stay on his device while he is offline.
  if ((await readBoard(alice)).some(([t]) => t === 'water the plants'))
    throw new Error('an offline device\'s item reached alice');
  await alice.screenshot({path: path.join(artifacts, 'browser_board-alice-while-bob-offline.png')});
  await bob.screenshot({path: path.join(artifacts, 'browser_board-bob-offline.png')});

  step('bob switches back online; both pages converge');
  await bob.click('#offline-toggle');
  const converged = [['buy oat milk', false, 1], ['book the venue', true, 4], ['water the plants', false, 0]];
  await waitForBoard(alice, converged);
  await waitForBoard(bob, converged);
  await waitForState(bob, 'live');
  await waitUntil(bob, 'no unsent changes', async (p) => (await text(p, '#pending')) === '0');

  step('alice moves the plants to the top and bob deletes the milk: both pages follow');
  await (await itemByTitle(alice, 'water the plants')).locator('.up').click();
  await waitForBoard(alice, [['buy oat milk', false, 1], ['water the plants', false, 0], ['book the venue', true, 4]]);
  await (await itemByTitle(alice, 'water the plants')).locator('.up').click();
  const moved = [['water the plants', false, 0], ['buy oat milk', false, 1], ['book the venue', true, 4]];
  await waitForBoard(alice, moved);
  await waitForBoard(bob, moved);
  await (await itemByTitle(bob, 'buy oat milk')).locator('.delete').click();
  const final = [['water the plants', false, 0], ['book the venue', true, 4]];
  await waitForBoard(alice, final);
  await waitForBoard(bob, final);
  if (!same(await readBoard(alice), await readBoard(bob))) throw new Error('the boards differ');
  step('both pages show the same board');

  step('on schema version 2, alice gives the venue a due date and an assignee: bob\'s page shows them');
  if (await text(alice, '#schema-version') !== '2') throw new Error('alice\'s page does not show schema version 2');
  const venue = await itemByTitle(alice, 'book the venue');
  await venue.locator('.due-input').fill('2026-12-20');
  await venue.locator('.due-input').blur();
  await venue.locator('.assignee-input').fill('bob');
  await venue.locator('.assignee-input').press('Enter');
  await waitUntil(bob, 'the venue\'s due date and assignee', async (p) => {
    const item = await itemByTitle(p, 'book the venue');
    return await item.locator('.due-input').inputValue() === '2026-12-20' &&
           await item.locator('.assignee-input').inputValue() === 'bob';
  });
} catch (e) {
  failed = true;
  console.error(`board_test: FAILED: ${e.message}`);
} finally {
  for (const [name, page] of [['alice', alice], ['bob', bob]]) {
    if (!page) continue;
    const file = path.resolve(artifacts, `browser_board-${name}.png`);
    try {
      await page.screenshot({path: file, fullPage: true});
      console.log(`screenshot: ${file}`);
    } catch (e) {
      console.error(`board_test: no screenshot of ${name}'s page: ${e.message}`);
    }
  }
  await browser.close();
}
console.log(failed ? 'board_test: FAILED' : 'board_test: passed');
process.exit(failed ? 1 : 0);
