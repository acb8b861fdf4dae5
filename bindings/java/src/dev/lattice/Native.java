package dev.lattice;

/**
 * The native methods of bindings/java/jni/lattice_jni.c, one per C API call. Handles are
 * pointers held as longs; the public classes check them before every call, so a closed handle
 * never reaches native code. Loads {@code liblattice_jni} (System.loadLibrary("lattice_jni"),
 * or System.load of the path in the {@code dev.lattice.library} system property when set).
 */
final class Native {
  static {
    String path = System.getProperty("dev.lattice.library");
    if (path != null && !path.isEmpty()) {
      System.load(path);
    } else {
      System.loadLibrary("lattice_jni");
    }
  }

  private Native() {}

  static native int apiVersion();

  static native String codeName(int code);

  static native long replicaOpen(
      String path, String synchronous, int busyTimeoutMs, byte[] encryptionKey);

  static native void replicaFree(long replica);

  static native void replicaRotateKey(long replica, byte[] newKey);

  static native void replicaExec(long replica, String sql);

  static native void replicaReplicate(long replica, String table, String columnTypesJson);

  static native boolean replicaMigrate(long replica, long version, String sql);

  static native String replicaVersionVector(long replica);

  /** lattice_replica_write_snapshot, or with {@code install} lattice_replica_install_snapshot. */
  static native String replicaSnapshot(long replica, String path, boolean install);

  static native byte[] replicaChangesSince(long replica, String sinceJson, long maxChanges);

  /** {received, applied}. */
  static native long[] replicaApply(long replica, byte[] changes);

  static native int replicaSubscribe(long replica, Replica.Dispatcher dispatcher);

  static native void replicaUnsubscribe(long replica, int subscription);

  static native long stmtPrepare(long replica, String sql);

  static native void stmtBindLong(long stmt, int index, long value);

  static native void stmtBindDouble(long stmt, int index, double value);

  static native void stmtBindText(long stmt, int index, String value);

  static native void stmtBindBlob(long stmt, int index, byte[] value);

  static native void stmtBindNull(long stmt, int index);

  /** True: a row is ready; false: done. */
  static native boolean stmtStep(long stmt);

  static native void stmtReset(long stmt);

  static native void stmtClearBindings(long stmt);

  static native int stmtColumnCount(long stmt);

  static native String stmtColumnName(long stmt, int index);

  /** Long, Double, String, byte[] or null. */
  static native Object stmtColumn(long stmt, int index);

  static native void stmtFinalize(long stmt);

  static native long syncStart(String replicaPath, String url, String token, String caFile,
      boolean allowInsecureRemote, int minBackoffMs, int maxBackoffMs, int pollIntervalMs,
      int connectTimeoutMs, SyncListener listener, TokenRenewer renewer, boolean noSnapshot,
      byte[] encryptionKey);

  static native void syncStop(long sync);

  static native void syncFree(long sync);

  static native int syncState(long sync);

  static native long syncPending(long sync);

  static native String syncLastError(long sync);

  static native boolean syncWaitInSync(long sync, int timeoutMs);
}
