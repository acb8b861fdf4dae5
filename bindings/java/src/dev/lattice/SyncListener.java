package dev.lattice;

/**
 * Told of each change of a sync client's status, on the client's own thread (a native thread
 * attached to the JVM as "lattice-sync"), one call at a time. It must return quickly (post to
 * the UI thread on Android) and must not call {@link SyncClient#stop()} or
 * {@link SyncClient#close()} (those throw LatticeException STATE there). An exception it throws
 * is printed to stderr and otherwise ignored.
 */
@FunctionalInterface
public interface SyncListener {
  void onStatus(SyncStatus status);
}
