package dev.lattice;

import java.util.Arrays;
import java.util.Collections;
import java.util.Objects;

/**
 * A replica file: a SQLite database whose replicated tables merge with other replicas'
 * (lattice_replica). Close it when done; its statements must be closed too.
 *
 * <p>Thread-safe in the sense that calls from several threads are serialized on this object
 * (the C API wants one thread at a time); for parallel work, open several replicas on one file.
 */
public final class Replica implements AutoCloseable {
  private long handle;
  private boolean dispatching;

  private Replica(long handle) {
    this.handle = handle;
  }

  /** Opens (creating when missing) the replica at {@code path} (":memory:" for a private one). */
  public static Replica open(String path) {
    return open(path, null, 0);
  }

  /**
   * Opens with options: {@code synchronous} "FULL" or "NORMAL" (null: "NORMAL"), and how long
   * to wait for another connection's write lock (0: 5000 ms). Throws IO, UNSUPPORTED_VERSION.
   */
  public static Replica open(String path, String synchronous, int busyTimeoutMs) {
    return open(path, synchronous, busyTimeoutMs, null);
  }

  /**
   * Opens a replica encrypted at rest under {@code encryptionKey} (32 bytes; null: a plain
   * file), with the options above. A new file is created encrypted; an existing one opens only
   * under its own key. Throws KEY for a missing or wrong key (or a key for a plain file),
   * INVALID_ARGUMENT for a key that is not 32 bytes, and the errors above.
   */
  public static Replica open(
      String path, String synchronous, int busyTimeoutMs, byte[] encryptionKey) {
    Objects.requireNonNull(path, "path");
    return new Replica(Native.replicaOpen(path, synchronous, busyTimeoutMs, encryptionKey));
  }

  /**
   * Re-encrypts the file of a replica opened with an encryption key under {@code newKey} (32
   * bytes), in place. The replica needs the file to itself: other connections (a SyncClient on
   * the same file: stop it first) make it wait the busy timeout and then fail with BUSY, changing
   * nothing. A rotation cut short by a crash leaves the file under the old key. Throws STATE for
   * a plain replica, INVALID_ARGUMENT for a key that is not 32 bytes, CORRUPT, IO.
   */
  public synchronized void rotateKey(byte[] newKey) {
    Native.replicaRotateKey(live(), newKey);
  }

  /** Runs one or more SQL statements, discarding rows. Throws SQL, SCHEMA. */
  public synchronized void exec(String sql) {
    Native.replicaExec(live(), Objects.requireNonNull(sql, "sql"));
  }

  /**
   * Makes {@code table} replicated. {@code columnTypesJson} maps columns to "lww" or "counter",
   * e.g. {"votes": "counter"}; null means all "lww". Throws SCHEMA, INVALID_ARGUMENT.
   */
  public synchronized void replicate(String table, String columnTypesJson) {
    Native.replicaReplicate(live(), Objects.requireNonNull(table, "table"), columnTypesJson);
  }

  /**
   * Runs {@code sql}, the migration numbered {@code version} (1 and up), once, in one
   * transaction; returns whether it ran (false when the schema is already at that version or
   * later). Throws SCHEMA when migration {@code version} ran before with other SQL.
   */
  public synchronized boolean migrate(long version, String sql) {
    return Native.replicaMigrate(live(), version, Objects.requireNonNull(sql, "sql"));
  }

  /** This replica's version vector as JSON, {"<site id>": seq, ...}. */
  public synchronized String versionVector() {
    return Native.replicaVersionVector(live());
  }

  /**
   * Writes this replica's replicated state, as of one moment, to a new SQLite file at {@code
   * path} (a snapshot); returns the version vector it holds. Throws IO when {@code path} exists.
   */
  public synchronized String writeSnapshot(String path) {
    return Native.replicaSnapshot(live(), Objects.requireNonNull(path, "path"), false);
  }

  /**
   * Installs the snapshot at {@code path} into this replica, which must have its replicated
   * schema in place and must not have written or merged anything yet: how an app seeds a new
   * replica with a data set it ships or downloads. Afterwards the replica holds the snapshot's
   * rows under its own site id and syncs from there; subscribers are not called for them.
   * Returns the new version vector. Throws STATE (not empty), SCHEMA (another replicated
   * schema), CORRUPT (not a sound snapshot), COPIED_REPLICA, CLOCK_DRIFT or IO; the replica is
   * then as it was.
   */
  public synchronized String installSnapshot(String path) {
    return Native.replicaSnapshot(live(), Objects.requireNonNull(path, "path"), true);
  }

  /**
   * The changes a holder of {@code sinceJson} (a {@link #versionVector()}; null for everything)
   * lacks, as changeset bytes.
   */
  public byte[] changesSince(String sinceJson) {
    return changesSince(sinceJson, 0);
  }

  /** As {@link #changesSince(String)}, cut after about {@code maxChanges} changes (0: no limit). */
  public synchronized byte[] changesSince(String sinceJson, long maxChanges) {
    if (maxChanges < 0) {
      throw new LatticeException(LatticeException.INVALID_ARGUMENT, "maxChanges is negative");
    }
    return Native.replicaChangesSince(live(), sinceJson, maxChanges);
  }

  /** What {@link #apply} did. */
  public static final class ApplyResult {
    /** Column changes in the changeset. */
    public final long received;
    /** Of those, the ones that won and changed this replica. */
    public final long applied;

    ApplyResult(long received, long applied) {
      this.received = received;
      this.applied = applied;
    }

    @Override
    public String toString() {
      return "applied " + applied + " of " + received;
    }
  }

  /**
   * Merges changeset bytes in one transaction; idempotent, in any order. On failure the replica
   * is unchanged: CORRUPT, TOO_LARGE, UNSUPPORTED_VERSION, UNKNOWN_TABLE, UNKNOWN_COLUMN,
   * TYPE_MISMATCH, SCHEMA, CLOCK_DRIFT, STATE (inside a transaction).
   */
  public synchronized ApplyResult apply(byte[] changes) {
    long[] counts = Native.replicaApply(live(), Objects.requireNonNull(changes, "changes"));
    return new ApplyResult(counts[0], counts[1]);
  }

  /** Prepares one SQL statement. Throws SQL, INVALID_ARGUMENT. */
  public synchronized Statement prepare(String sql) {
    return new Statement(this, Native.stmtPrepare(live(), Objects.requireNonNull(sql, "sql")));
  }

  /**
   * Calls {@code listener} after each transaction that touches replicated tables, local or
   * merged, until the subscription or the replica is closed.
   */
  public synchronized Subscription subscribe(ChangeListener listener) {
    Objects.requireNonNull(listener, "listener");
    return new Subscription(this, Native.replicaSubscribe(live(), new Dispatcher(listener)));
  }

  synchronized void unsubscribe(int id) {
    if (handle != 0) Native.replicaUnsubscribe(handle, id);
  }

  /** Closes the database and releases the handle. Idempotent. */
  @Override
  public synchronized void close() {
    if (dispatching) {
      throw new LatticeException(LatticeException.STATE, "Replica.close() from a change listener");
    }
    if (handle != 0) {
      long h = handle;
      handle = 0;
      Native.replicaFree(h);
    }
  }

  public synchronized boolean isClosed() {
    return handle == 0;
  }

  /** The handle for a call; throws STATE when closed or inside a listener. Hold the lock. */
  long live() {
    if (handle == 0) throw new LatticeException(LatticeException.STATE, "the replica is closed");
    if (dispatching) {
      throw new LatticeException(
          LatticeException.STATE, "a change listener may not call its replica");
    }
    return handle;
  }

  /** Called by native code on the thread of the committing call, holding this replica's lock. */
  final class Dispatcher {
    private final ChangeListener listener;

    Dispatcher(ChangeListener listener) {
      this.listener = listener;
    }

    void dispatch(Change[] changes) {
      dispatching = true;
      try {
        listener.onChanges(Collections.unmodifiableList(Arrays.asList(changes)));
      } finally {
        dispatching = false;
      }
    }
  }
}
