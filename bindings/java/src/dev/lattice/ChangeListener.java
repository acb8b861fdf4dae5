package dev.lattice;

import java.util.List;

/**
 * Receives the rows of each committed transaction on a replica. Called on the thread whose
 * replica call committed it, after the commit. It may call {@link Subscription#close()} but no
 * other method of the replica (those throw LatticeException STATE). An exception it throws is
 * rethrown by the replica call that committed the transaction, after the commit.
 */
@FunctionalInterface
public interface ChangeListener {
  void onChanges(List<Change> changes);
}
