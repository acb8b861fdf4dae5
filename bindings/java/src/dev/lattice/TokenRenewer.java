package dev.lattice;

/**
 * Gives a sync client a new bearer token when the relay refuses the current one as unauthorized
 * (it expired on an open connection, or at a hello). Called on the client's own thread (the
 * native "lattice-sync" thread); it may block while it fetches a token, and must not call
 * {@link SyncClient#stop()} or {@link SyncClient#close()}. An exception it throws is printed to
 * stderr and counts as giving up.
 */
@FunctionalInterface
public interface TokenRenewer {
  /**
   * Returns a new token to reconnect with at once, or null to give up (the client then stays
   * offline; its status is fatal). {@code reason} is the relay's message.
   */
  String renew(String reason);
}
