package dev.lattice;

import java.util.Objects;
import java.util.concurrent.locks.ReentrantReadWriteLock;

/**
 * Keeps a replica file in sync with a relay on its own thread, reconnecting with backoff, until
 * stopped (lattice_sync). It opens its own connection to the file: the application keeps writing
 * through its own {@link Replica}. Any thread may call it.
 */
public final class SyncClient implements AutoCloseable {
  /** Options for {@link SyncClient#start}; zero means the C API's default. */
  public static final class Options {
    String caFile;
    boolean allowInsecureRemote;
    int minBackoffMs;
    int maxBackoffMs;
    int pollIntervalMs;
    int connectTimeoutMs;
    SyncListener listener;
    TokenRenewer tokenRenewer;
    boolean noSnapshot;
    byte[] encryptionKey;

    /** PEM certificates to trust besides the system's (a self-signed relay). */
    public Options caFile(String path) {
      caFile = path;
      return this;
    }

    /** Allow ws:// to a host that is not loopback. */
    public Options allowInsecureRemote(boolean allow) {
      allowInsecureRemote = allow;
      return this;
    }

    /** First and largest reconnect delays (0: 100 and 30000 ms). */
    public Options backoffMs(int min, int max) {
      minBackoffMs = min;
      maxBackoffMs = max;
      return this;
    }

    /** How often other connections' writes are looked for (0: 50 ms). */
    public Options pollIntervalMs(int ms) {
      pollIntervalMs = ms;
      return this;
    }

    /** Bound on one connection attempt (0: 10000 ms). */
    public Options connectTimeoutMs(int ms) {
      connectTimeoutMs = ms;
      return this;
    }

    /** Asked for a new token when the relay refuses the current one (it expired). */
    public Options tokenRenewer(TokenRenewer renewer) {
      tokenRenewer = renewer;
      return this;
    }

    /**
     * Sync change by change even when the replica is empty. By default an empty replica starts
     * from the relay's snapshot of the namespace, then syncs what changed since.
     */
    public Options noSnapshot(boolean off) {
      noSnapshot = off;
      return this;
    }

    /** The replica file's key when it is encrypted at rest (32 bytes; see Replica.open). */
    public Options encryptionKey(byte[] key) {
      encryptionKey = key;
      return this;
    }

    /** Told of every status change, on the sync thread. */
    public Options listener(SyncListener listener) {
      this.listener = listener;
      return this;
    }
  }

  // Getters and waits hold the read lock, close() the write lock: the handle is never freed
  // under a call. stop() needs neither: the C API allows it at any time before free.
  // A listener's calls skip the lock: close() cannot free the handle while the sync thread
  // runs a callback (free joins that thread), and waiting for the lock there could deadlock.
  private final ReentrantReadWriteLock lock = new ReentrantReadWriteLock();
  private final Dispatcher dispatcher;
  private volatile long handle;

  private SyncClient(long handle, Dispatcher dispatcher) {
    this.handle = handle;
    this.dispatcher = dispatcher;
  }

  /** Remembers the sync thread, so that calls from the listener can be told apart. */
  private static final class Dispatcher implements SyncListener {
    private final SyncListener listener;
    volatile Thread thread;

    Dispatcher(SyncListener listener) {
      this.listener = listener;
    }

    @Override
    public void onStatus(SyncStatus status) {
      thread = Thread.currentThread();
      listener.onStatus(status);
    }
  }

  private void lock() {
    if (dispatcher == null || dispatcher.thread != Thread.currentThread()) lock.readLock().lock();
  }

  private void unlock() {
    if (dispatcher == null || dispatcher.thread != Thread.currentThread()) lock.readLock().unlock();
  }

  /**
   * Starts syncing the replica file at {@code replicaPath} with the relay at {@code url}
   * (wss://HOST:PORT/NAMESPACE, or ws:// to loopback) using bearer {@code token}. Throws
   * INVALID_ARGUMENT for a malformed or refused URL; connection failures are not errors here
   * but show in the status.
   */
  public static SyncClient start(String replicaPath, String url, String token, Options options) {
    Objects.requireNonNull(replicaPath, "replicaPath");
    Objects.requireNonNull(url, "url");
    Objects.requireNonNull(token, "token");
    Options o = options != null ? options : new Options();
    Dispatcher dispatcher = o.listener != null ? new Dispatcher(o.listener) : null;
    return new SyncClient(Native.syncStart(replicaPath, url, token, o.caFile,
                              o.allowInsecureRemote, o.minBackoffMs, o.maxBackoffMs,
                              o.pollIntervalMs, o.connectTimeoutMs, dispatcher, o.tokenRenewer,
                              o.noSnapshot, o.encryptionKey),
        dispatcher);
  }

  public SyncState state() {
    lock();
    try {
      return handle == 0 ? SyncState.OFFLINE : SyncState.of(Native.syncState(handle));
    } finally {
      unlock();
    }
  }

  /** Local transactions the relay has not acknowledged, as far as the client knows. */
  public long pending() {
    lock();
    try {
      return handle == 0 ? 0 : Native.syncPending(handle);
    } finally {
      unlock();
    }
  }

  /** The latest failure, "" when none yet (not cleared by a later success). */
  public String lastError() {
    lock();
    try {
      return Native.syncLastError(live());
    } finally {
      unlock();
    }
  }

  /**
   * Blocks up to {@code timeoutMs} until in sync with every write committed before the call
   * included: true, or false on timeout. Throws STATE when stopped or given up after a fatal
   * error (the message gives the last error).
   */
  public boolean waitInSync(int timeoutMs) {
    lock();
    try {
      return Native.syncWaitInSync(live(), timeoutMs);
    } finally {
      unlock();
    }
  }

  /** Closes the connection and joins the sync thread. Idempotent; getters keep answering. */
  public void stop() {
    lock();
    try {
      if (handle != 0) Native.syncStop(handle);
    } finally {
      unlock();
    }
  }

  /** Stops and releases the client. Idempotent. */
  @Override
  public void close() {
    stop();
    lock.writeLock().lock();
    try {
      if (handle != 0) {
        Native.syncFree(handle);
        handle = 0;
      }
    } finally {
      lock.writeLock().unlock();
    }
  }

  private long live() {
    long h = handle;
    if (h == 0) throw new LatticeException(LatticeException.STATE, "the sync client is closed");
    return h;
  }
}
