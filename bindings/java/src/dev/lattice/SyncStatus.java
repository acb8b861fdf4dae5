package dev.lattice;

/** A snapshot of a sync client's status, as a {@link SyncListener} receives it. */
public final class SyncStatus {
  public final SyncState state;
  /** Local transactions the relay has not acknowledged. */
  public final long pending;
  /** The relay acknowledged everything, and this replica holds its changes. */
  public final boolean inSync;
  /** An error reconnecting cannot fix (a bad token, ...): the client stays offline. */
  public final boolean fatal;
  /** The latest failure, "" when none yet. */
  public final String lastError;

  SyncStatus(int state, long pending, boolean inSync, boolean fatal, String lastError) {
    this.state = SyncState.of(state);
    this.pending = pending;
    this.inSync = inSync;
    this.fatal = fatal;
    this.lastError = lastError;
  }

  @Override
  public String toString() {
    return state + " pending=" + pending + (inSync ? " in sync" : "") + (fatal ? " fatal" : "")
        + (lastError.isEmpty() ? "" : " last error: " + lastError);
  }
}
