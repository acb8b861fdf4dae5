package dev.lattice.test;

import dev.lattice.Change;
import dev.lattice.Lattice;
import dev.lattice.LatticeException;
import dev.lattice.Replica;
import dev.lattice.Statement;
import dev.lattice.Subscription;
import dev.lattice.SyncClient;
import dev.lattice.SyncState;
import dev.lattice.SyncStatus;
import java.io.BufferedReader;
import java.io.File;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.stream.Stream;

/**
 * The Java binding against the real library: two replicas exchanging changesets, statements,
 * subscriptions, errors, and two sync clients converging through a real lattice-relay on
 * 127.0.0.1. A plain main(): prints each failed check and exits 1 when any failed.
 * Usage: LatticeTest [path to lattice-relay] (without it the sync case is skipped, loudly).
 */
public final class LatticeTest {
  private static final String SCHEMA = "CREATE TABLE IF NOT EXISTS todo(id TEXT PRIMARY KEY, "
      + "title TEXT, votes INTEGER NOT NULL DEFAULT 0, done REAL, icon BLOB)";
  private static int failures;
  private static String currentCase = "";
  private static Path dir;

  private static void check(boolean ok, String what) {
    if (!ok) {
      failures++;
      System.err.println("FAILED [" + currentCase + "]: " + what);
    }
  }

  private static void checkEquals(Object expected, Object actual, String what) {
    boolean same = expected == null ? actual == null
        : expected instanceof byte[] && actual instanceof byte[]
            ? Arrays.equals((byte[]) expected, (byte[]) actual)
            : expected.equals(actual);
    check(same, what + ": expected " + expected + ", got " + actual);
  }

  /** Runs {@code body} and checks that it throws a LatticeException with {@code code}. */
  private static LatticeException checkThrows(int code, Runnable body, String what) {
    try {
      body.run();
    } catch (LatticeException e) {
      check(e.code() == code, what + ": code " + e.codeName() + " (" + e.getMessage() + "), want "
          + Lattice.codeName(code));
      return e;
    }
    check(false, what + ": did not throw");
    return null;
  }

  private static Replica openTodo(String name) {
    Replica r = Replica.open(dir.resolve(name).toString());
    r.exec(SCHEMA);
    r.replicate("todo", "{\"votes\": \"counter\"}");
    return r;
  }

  private static long queryLong(Replica r, String sql) {
    try (Statement s = r.prepare(sql)) {
      check(s.step(), "a row for " + sql);
      return s.getLong(0);
    }
  }

  /** The whole todo table, ordered, as text: equal on converged replicas. */
  private static String dump(Replica r) {
    StringBuilder out = new StringBuilder();
    try (Statement s = r.prepare("SELECT id, title, votes, done, icon FROM todo ORDER BY id")) {
      while (s.step()) {
        for (int i = 0; i < s.columnCount(); ++i) {
          Object v = s.get(i);
          out.append(v instanceof byte[] ? Arrays.toString((byte[]) v) : String.valueOf(v));
          out.append(i + 1 < s.columnCount() ? "|" : "\n");
        }
      }
    }
    return out.toString();
  }

  /** Carries what {@code to} lacks from {@code from}, as bytes. */
  private static Replica.ApplyResult exchange(Replica from, Replica to) {
    byte[] changes = from.changesSince(to.versionVector());
    return to.apply(changes);
  }

  private static void testChangesets() {
    currentCase = "changesets";
    check(Lattice.apiVersion() >= 1, "api version");
    checkEquals("sql", Lattice.codeName(LatticeException.SQL), "code name");
    try (Replica phone = openTodo("phone.db"); Replica laptop = openTodo("laptop.db")) {
      List<Change> seen = new CopyOnWriteArrayList<>();
      Subscription sub = laptop.subscribe(seen::addAll);

      String title = "buy milk \u00e9\u4e2d\ud83d\ude00 \u0000end"; // non-BMP and NUL survive
      byte[] icon = {0, 1, 2, (byte) 0xff};
      try (Statement insert =
               phone.prepare("INSERT INTO todo(id, title, done, icon) VALUES (?, ?, ?, ?)")) {
        insert.bind(1, "a").bind(2, title).bind(3, 0.5).bind(4, icon).execute();
        insert.reset().clearBindings().bind(1, "b").bind(2, (String) null).execute();
        checkThrows(LatticeException.SQL, insert::execute, "a duplicate key");
        insert.reset();
      }
      phone.exec("UPDATE todo SET votes = votes + 2 WHERE id = 'a'");
      laptop.exec("INSERT INTO todo(id, title) VALUES ('c', 'from the laptop')");
      laptop.exec("UPDATE todo SET votes = votes + 1 WHERE id = 'c'");
      seen.clear();

      Replica.ApplyResult toLaptop = exchange(phone, laptop);
      check(toLaptop.received > 0 && toLaptop.applied > 0, "laptop applied " + toLaptop);
      Replica.ApplyResult toPhone = exchange(laptop, phone);
      check(toPhone.applied > 0, "phone applied " + toPhone);
      // Idempotent: the same changes again change nothing.
      checkEquals(0L, exchange(phone, laptop).applied, "a second apply");

      checkEquals(dump(phone), dump(laptop), "converged tables");
      checkEquals(phone.versionVector(), laptop.versionVector(), "converged version vectors");
      try (Statement q = laptop.prepare("SELECT title, votes, done, icon, id FROM todo WHERE id = ?")) {
        q.bind(1, "a");
        check(q.step(), "row a on the laptop");
        checkEquals("title", q.columnName(0), "column name");
        checkEquals(title, q.getString(0), "unicode title");
        checkEquals(2L, q.getLong(1), "votes");
        checkEquals(0.5, q.getDouble(2), "done");
        checkEquals(icon, q.getBlob(3), "blob");
        checkThrows(LatticeException.TYPE_MISMATCH, () -> q.getBlob(0), "text read as a blob");
        checkThrows(LatticeException.INVALID_ARGUMENT, () -> q.get(9), "a column out of range");
        check(!q.step(), "one row");
        checkThrows(LatticeException.STATE, () -> q.get(0), "a column with no row");
      }
      checkEquals(null, queryTitle(laptop, "b"), "a NULL title");

      // The laptop's listener saw the merged rows of phone's writes.
      boolean sawMergedA = false;
      for (Change c : seen) {
        if (c.table().equals("todo") && c.primaryKey().equals(List.of("a")) && c.merged()) {
          sawMergedA |= c.columns().contains("title");
        }
      }
      check(sawMergedA, "the listener saw row a merged, with its title: " + seen);
      seen.clear();
      laptop.exec("DELETE FROM todo WHERE id = 'b'");
      check(seen.size() == 1 && seen.get(0).deleted() && !seen.get(0).merged(),
          "a local delete seen: " + seen);
      sub.close();
      sub.close(); // idempotent
      seen.clear();
      laptop.exec("UPDATE todo SET votes = votes + 1 WHERE id = 'a'");
      check(seen.isEmpty(), "no calls after unsubscribing");

      // A listener may not call its replica; one that throws has its exception rethrown by the
      // call that committed, after the commit.
      try (Subscription reentrant = laptop.subscribe(changes -> laptop.exec("SELECT 1"))) {
        checkThrows(LatticeException.STATE,
            () -> laptop.exec("UPDATE todo SET votes = votes + 1 WHERE id = 'a'"),
            "a listener calling its replica");
      }
      checkEquals(4L, queryLong(laptop, "SELECT votes FROM todo WHERE id = 'a'"),
          "both increments committed despite the listener");
      try (Subscription throwing = laptop.subscribe(changes -> {
             throw new IllegalStateException("listener failed");
           })) {
        try {
          laptop.exec("UPDATE todo SET title = 'x' WHERE id = 'c'");
          check(false, "the listener's exception was rethrown");
        } catch (IllegalStateException e) {
          checkEquals("listener failed", e.getMessage(), "the listener's exception");
        }
      }
      checkEquals("x", queryTitle(laptop, "c"), "the write committed before the listener threw");

      // Errors carry the C API's code and message.
      LatticeException e = checkThrows(LatticeException.SQL, () -> phone.exec("SELEC 1"), "bad SQL");
      check(e != null && e.getMessage().contains("SELEC"), "the message names the SQL: " + e);
      checkThrows(LatticeException.CORRUPT, () -> phone.apply(new byte[] {1, 2, 3}),
          "garbage bytes");
      checkThrows(LatticeException.SCHEMA, () -> {
        phone.exec("CREATE TABLE nokey(x)");
        phone.replicate("nokey", null);
      }, "a table without a primary key");
      checkThrows(LatticeException.INVALID_ARGUMENT, () -> phone.changesSince("{not json"),
          "a malformed version vector");
      // Cut changesets continue where the last one stopped.
      try (Replica fresh = openTodo("fresh.db")) {
        for (int i = 0; i < 20; ++i) {
          byte[] part = laptop.changesSince(fresh.versionVector(), 2);
          if (fresh.apply(part).received == 0) break;
        }
        checkEquals(dump(laptop), dump(fresh), "a replica filled by cut changesets");
      }
      Statement leftOver = phone.prepare("SELECT count(*) FROM todo");
      phone.close();
      phone.close(); // idempotent
      checkThrows(LatticeException.STATE, () -> phone.exec("SELECT 1"), "a closed replica");
      checkThrows(LatticeException.STATE, leftOver::step, "a statement of a closed replica");
      leftOver.close();
    }
    try {
      Replica.open(dir.resolve("no/such/dir/x.db").toString());
      check(false, "opening in a missing directory fails");
    } catch (LatticeException e) {
      check(e.code() == LatticeException.IO, "open failure code: " + e);
    }
  }

  /** A replica encrypted at rest opens only under its key, and its file holds no plaintext. */
  private static void testEncrypted() throws Exception {
    currentCase = "encrypted";
    byte[] key = new byte[32];
    byte[] other = new byte[32];
    for (int i = 0; i < 32; i++) {
      key[i] = (byte) (i * 5 + 3);
      other[i] = (byte) (i * 5 + 4);
    }
    String path = dir.resolve("vault.db").toString();
    try (Replica vault = Replica.open(path, null, 0, key)) {
      vault.exec("CREATE TABLE secret(id TEXT PRIMARY KEY, word TEXT);"
          + "SELECT lattice_replicate('secret');"
          + "INSERT INTO secret VALUES ('s1', 'marmalade')");
    }
    String bytes =
        new String(Files.readAllBytes(dir.resolve("vault.db")), StandardCharsets.ISO_8859_1);
    check(!bytes.contains("marmalade"), "no plaintext in the encrypted file");
    checkThrows(LatticeException.KEY, () -> Replica.open(path), "no key");
    checkThrows(LatticeException.KEY, () -> Replica.open(path, null, 0, other), "another key");
    checkThrows(LatticeException.INVALID_ARGUMENT, () -> Replica.open(path, null, 0, new byte[31]),
        "a short key");
    try (Replica vault = Replica.open(path, null, 0, key)) {
      checkEquals(1L, queryLong(vault, "SELECT count(*) FROM secret WHERE word = 'marmalade'"),
          "the row, read under the key");
      checkThrows(LatticeException.INVALID_ARGUMENT, () -> vault.rotateKey(new byte[16]),
          "a short new key");
      vault.rotateKey(other);
      vault.exec("INSERT INTO secret VALUES ('s2', 'quince')");
    }
    checkThrows(LatticeException.KEY, () -> Replica.open(path, null, 0, key), "the rotated-out key");
    try (Replica vault = Replica.open(path, null, 0, other)) {
      checkEquals(2L, queryLong(vault, "SELECT count(*) FROM secret"), "the rows, under the new key");
    }
  }

  /** One replica shared by several threads: the binding serializes their calls. */
  private static void testSnapshots() {
    currentCase = "snapshots";
    try (Replica shop = openTodo("shop.db"); Replica tablet = openTodo("tablet.db")) {
      shop.exec("INSERT INTO todo(id, title, votes) VALUES ('a', 'bread', 2), ('b', 'jam', 1)");
      String path = dir.resolve("shop.snapshot").toString();
      String held = shop.writeSnapshot(path);
      checkEquals(shop.versionVector(), held, "the snapshot's vector");
      checkThrows(LatticeException.IO, () -> shop.writeSnapshot(path), "an existing file");
      checkEquals(held, tablet.installSnapshot(path), "the installed vector");
      checkEquals(dump(shop), dump(tablet), "the installed rows");
      checkThrows(LatticeException.STATE, () -> tablet.installSnapshot(path), "a second install");
      tablet.exec("UPDATE todo SET votes = votes + 4 WHERE id = 'a'");
      checkEquals(1L, exchange(tablet, shop).applied, "the tablet's own write");
      checkEquals(6L, queryLong(shop, "SELECT votes FROM todo WHERE id = 'a'"), "votes");
    }
  }

  private static void testThreads() throws Exception {
    currentCase = "threads";
    try (Replica shared = openTodo("threads.db")) {
      List<Throwable> errors = new CopyOnWriteArrayList<>();
      List<String> seenIds = new CopyOnWriteArrayList<>();
      try (Subscription sub = shared.subscribe(changes -> {
             for (Change c : changes) seenIds.add((String) c.primaryKey().get(0));
           })) {
        Thread[] threads = new Thread[4];
        for (int t = 0; t < threads.length; ++t) {
          final int n = t;
          threads[t] = new Thread(() -> {
            try (Statement insert = shared.prepare("INSERT INTO todo(id, votes) VALUES (?, ?)")) {
              for (int i = 0; i < 50; ++i) {
                insert.reset().bind(1, n + "-" + i).bind(2, i).execute();
                shared.exec("UPDATE todo SET votes = votes + 1 WHERE id = '" + n + "-" + i + "'");
              }
            } catch (Throwable e) {
              errors.add(e);
            }
          });
          threads[t].start();
        }
        for (Thread t : threads) t.join(30_000);
        check(errors.isEmpty(), "no errors from the threads: " + errors);
      }
      checkEquals(200L, queryLong(shared, "SELECT count(*) FROM todo"), "rows from 4 threads");
      // Each thread: votes i + 1 for i in 0..49, 1275 in all.
      checkEquals(4L * 1275, queryLong(shared, "SELECT sum(votes) FROM todo"), "votes");
      checkEquals(400, seenIds.size(), "a change per insert and per update");
    }
  }

  private static String queryTitle(Replica r, String id) {
    try (Statement s = r.prepare("SELECT title FROM todo WHERE id = ?")) {
      s.bind(1, id);
      check(s.step(), "row " + id);
      return s.getString(0);
    }
  }

  // ---- Sync through a real relay --------------------------------------------------------------

  private static String run(List<String> command, long timeoutSeconds)
      throws IOException, InterruptedException {
    Process p = new ProcessBuilder(command).redirectError(ProcessBuilder.Redirect.INHERIT).start();
    byte[] out = p.getInputStream().readAllBytes();
    if (!p.waitFor(timeoutSeconds, TimeUnit.SECONDS)) {
      p.destroyForcibly();
      throw new IOException(command + " did not finish");
    }
    if (p.exitValue() != 0) throw new IOException(command + " exited " + p.exitValue());
    return new String(out, StandardCharsets.UTF_8).trim();
  }

  /** Waits up to 20 s for the relay's "listening on HOST:PORT" line. */
  private static int readPort(Process relay) throws Exception {
    BufferedReader lines = new BufferedReader(
        new InputStreamReader(relay.getInputStream(), StandardCharsets.UTF_8));
    String[] line = {null};
    Thread reader = new Thread(() -> {
      try {
        line[0] = lines.readLine();
      } catch (IOException ignored) {
        // line stays null
      }
    });
    reader.setDaemon(true);
    reader.start();
    reader.join(20_000);
    String l = line[0];
    if (l == null || !l.contains("listening on ")) {
      throw new IOException("relay did not say where it listens: " + l);
    }
    return Integer.parseInt(l.substring(l.lastIndexOf(':') + 1).trim());
  }

  private static boolean waitFor(java.util.function.BooleanSupplier condition, long timeoutMs)
      throws InterruptedException {
    long deadline = System.nanoTime() + timeoutMs * 1_000_000;
    while (!condition.getAsBoolean()) {
      if (System.nanoTime() > deadline) return false;
      Thread.sleep(20);
    }
    return true;
  }

  private static void testSync(String relayPath) throws Exception {
    currentCase = "sync";
    Path keys = dir.resolve("keys");
    Path schema = dir.resolve("schema.sql");
    Files.write(keys, "k1 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n"
        .getBytes(StandardCharsets.UTF_8));
    Files.setPosixFilePermissions(keys, java.nio.file.attribute.PosixFilePermissions.fromString("rw-------"));
    Files.write(schema, (SCHEMA + ";\nSELECT lattice_replicate('todo', '{\"votes\": \"counter\"}');\n")
        .getBytes(StandardCharsets.UTF_8));
    Process relay = new ProcessBuilder(relayPath, "serve", "--listen", "127.0.0.1:0", "--data",
        dir.resolve("relay-data").toString(), "--key-file", keys.toString(), "--insecure",
        "--schema", schema.toString())
        .redirectError(dir.resolve("relay.err").toFile())
        .start();
    try {
      int port = readPort(relay);
      String token = run(List.of(relayPath, "token", "--key-file", keys.toString(), "--ns",
          "board", "--rights", "read,write", "--ttl", "1h"), 20);
      check(token.length() > 20, "a token");
      String url = "ws://127.0.0.1:" + port + "/board";

      String phonePath = dir.resolve("sync-phone.db").toString();
      String laptopPath = dir.resolve("sync-laptop.db").toString();
      try (Replica phone = openTodo("sync-phone.db"); Replica laptop = openTodo("sync-laptop.db")) {
        phone.exec("INSERT INTO todo(id, title) VALUES ('p', 'offline edit')");
        List<SyncStatus> phoneSeen = new CopyOnWriteArrayList<>();
        List<String> listenerThreads = new CopyOnWriteArrayList<>();
        AtomicInteger listenerCalls = new AtomicInteger();
        List<SyncClient> fromListener = new ArrayList<>();
        SyncClient.Options options = new SyncClient.Options()
            .backoffMs(50, 500).pollIntervalMs(20).connectTimeoutMs(5000);
        try (SyncClient phoneSync = SyncClient.start(phonePath, url, token,
                 options.listener(status -> {
                   phoneSeen.add(status);
                   listenerThreads.add(Thread.currentThread().getName());
                   listenerCalls.incrementAndGet();
                 }));
             SyncClient laptopSync = SyncClient.start(laptopPath, url, token,
                 new SyncClient.Options().backoffMs(50, 500).pollIntervalMs(20).noSnapshot(true))) {
          check(phoneSync.waitInSync(20_000), "phone in sync");
          checkEquals(0L, phoneSync.pending(), "nothing pending");
          check(waitFor(() -> queryLong(laptop, "SELECT count(*) FROM todo WHERE id = 'p'") == 1,
                    20_000),
              "the laptop received the phone's offline edit");
          phone.exec("UPDATE todo SET votes = votes + 2 WHERE id = 'p'");
          laptop.exec("UPDATE todo SET votes = votes + 3 WHERE id = 'p'");
          check(phoneSync.waitInSync(20_000), "phone in sync after writes");
          check(laptopSync.waitInSync(20_000), "laptop in sync after writes");
          check(waitFor(() -> queryLong(phone, "SELECT votes FROM todo WHERE id = 'p'") == 5
                        && queryLong(laptop, "SELECT votes FROM todo WHERE id = 'p'") == 5,
                    20_000),
              "both replicas count 5 votes");
          check(waitFor(() -> dump(phone).equals(dump(laptop)), 20_000), "converged tables");
          checkEquals(dump(phone), dump(laptop), "converged tables");
          checkEquals(SyncState.LIVE, phoneSync.state(), "phone state");
          check(waitFor(() -> phoneSeen.stream().anyMatch(s -> s.state == SyncState.LIVE), 5000),
              "the listener saw LIVE: " + phoneSeen);
          check(listenerThreads.stream().allMatch(n -> n.equals("lattice-sync")),
              "the listener ran on the attached sync thread: " + listenerThreads);
          check(phoneSync.lastError() != null, "last error answers");

          phoneSync.stop();
          phoneSync.stop(); // idempotent
          checkEquals(SyncState.OFFLINE, phoneSync.state(), "stopped state");
          LatticeException stopped = checkThrows(LatticeException.STATE,
              () -> phoneSync.waitInSync(10), "waiting on a stopped client");
          check(stopped != null && stopped.getMessage().contains("stopped"), "says stopped");
          int calls = listenerCalls.get();
          Thread.sleep(100);
          checkEquals(calls, listenerCalls.get(), "no listener calls after stop");
        }

        // A bad token: the relay refuses it; the client gives up and says why; a listener that
        // calls stop() is refused.
        List<SyncStatus> badSeen = new CopyOnWriteArrayList<>();
        List<LatticeException> refused = new CopyOnWriteArrayList<>();
        SyncClient[] self = {null};
        java.util.concurrent.CountDownLatch started = new java.util.concurrent.CountDownLatch(1);
        try (SyncClient bad = SyncClient.start(phonePath, url, "not-a-token",
                 new SyncClient.Options().backoffMs(50, 500).listener(status -> {
                   badSeen.add(status);
                   try {
                     started.await(5, TimeUnit.SECONDS);
                   } catch (InterruptedException e) {
                     Thread.currentThread().interrupt();
                   }
                   SyncClient c = self[0];
                   if (c != null && status.fatal) {
                     c.state(); // getters are fine from the listener
                     try {
                       c.stop();
                     } catch (LatticeException e) {
                       refused.add(e);
                     }
                   }
                 }))) {
          self[0] = bad;
          started.countDown();
          LatticeException e = checkThrows(LatticeException.STATE, () -> bad.waitInSync(20_000),
              "waiting with a bad token");
          check(e != null && e.getMessage().contains("unauthorized"), "says unauthorized: " + e);
          check(waitFor(() -> badSeen.stream().anyMatch(s -> s.fatal), 5000),
              "the listener saw the fatal error: " + badSeen);
          check(bad.lastError().contains("unauthorized"), "last error: " + bad.lastError());
          check(waitFor(() -> !refused.isEmpty(), 5000)
                  && refused.get(0).code() == LatticeException.STATE,
              "stop() from the listener refused: " + refused);
        }
        // A token that expires on the open connection is renewed by the TokenRenewer, on the
        // sync thread.
        String shortToken = run(List.of(relayPath, "token", "--key-file", keys.toString(), "--ns",
            "board", "--rights", "read,write", "--ttl", "2s"), 20);
        List<String> renewReasons = new CopyOnWriteArrayList<>();
        try (SyncClient renewing = SyncClient.start(phonePath, url, shortToken,
                 new SyncClient.Options().backoffMs(50, 500).pollIntervalMs(20).tokenRenewer(
                     reason -> {
                       renewReasons.add(reason);
                       return token;
                     }))) {
          check(renewing.waitInSync(20_000), "in sync with the short token");
          Thread.sleep(3000);
          phone.exec("INSERT INTO todo(id, title) VALUES ('late', 'after expiry')");
          check(renewing.waitInSync(20_000), "in sync again after renewal: " + renewing.lastError());
          check(renewReasons.size() == 1 && renewReasons.get(0).contains("expired"),
              "renewed once: " + renewReasons);
        }
        checkThrows(LatticeException.INVALID_ARGUMENT,
            () -> SyncClient.start(phonePath, "http://127.0.0.1:1/board", token, null),
            "an http URL");
      }
    } finally {
      relay.destroy();
      if (!relay.waitFor(10, TimeUnit.SECONDS)) {
        relay.destroyForcibly();
        relay.waitFor(10, TimeUnit.SECONDS);
      }
    }
  }

  public static void main(String[] args) throws Exception {
    dir = Files.createTempDirectory("lattice-java-test");
    try {
      testChangesets();
      testSnapshots();
      testEncrypted();
      testThreads();
      if (args.length > 0) {
        testSync(args[0]);
      } else {
        System.err.println("LatticeTest: SKIPPED the sync case: pass the lattice-relay path");
      }
    } catch (Throwable t) {
      failures++;
      System.err.println("FAILED [" + currentCase + "]: " + t);
      t.printStackTrace();
    } finally {
      try (Stream<Path> paths = Files.walk(dir)) {
        paths.sorted(Comparator.reverseOrder()).map(Path::toFile).forEach(File::delete);
      }
    }
    if (failures > 0) {
      System.err.println("LatticeTest: " + failures + " check(s) failed");
      System.exit(1);
    }
    System.out.println("LatticeTest: all checks passed");
  }
}
