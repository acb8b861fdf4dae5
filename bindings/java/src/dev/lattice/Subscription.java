package dev.lattice;

/** A {@link ChangeListener} registered with {@link Replica#subscribe}; close() removes it. */
public final class Subscription implements AutoCloseable {
  private final Replica replica;
  private final int id;
  private boolean closed;

  Subscription(Replica replica, int id) {
    this.replica = replica;
    this.id = id;
  }

  /** Removes the listener. Idempotent; a no-op once the replica is closed. */
  @Override
  public void close() {
    synchronized (replica) {
      if (closed) return;
      closed = true;
      replica.unsubscribe(id);
    }
  }
}
