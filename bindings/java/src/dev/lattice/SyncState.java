package dev.lattice;

/** Where a sync client stands (lattice_sync_state). */
public enum SyncState {
  OFFLINE,
  CONNECTING,
  /** Connected, catching up. */
  SYNCING,
  /** Connected and caught up: changes flow as they happen. */
  LIVE;

  static SyncState of(int state) {
    SyncState[] all = values();
    return state >= 0 && state < all.length ? all[state] : OFFLINE;
  }
}
