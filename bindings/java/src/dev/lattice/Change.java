package dev.lattice;

import java.util.Arrays;
import java.util.Collections;
import java.util.List;

/** One row touched by a committed transaction, as a {@link ChangeListener} receives it. */
public final class Change {
  private final String table;
  private final Object[] primaryKey;
  private final String[] columns;
  private final boolean deleted;
  private final boolean merged;
  private final String conflict;

  Change(String table, Object[] primaryKey, String[] columns, boolean deleted, boolean merged,
      String conflict) {
    this.table = table;
    this.primaryKey = primaryKey;
    this.columns = columns;
    this.deleted = deleted;
    this.merged = merged;
    this.conflict = conflict;
  }

  public String table() {
    return table;
  }

  /** The key's values in key order: Long, Double, String, byte[] or null. */
  public List<Object> primaryKey() {
    return Collections.unmodifiableList(Arrays.asList(primaryKey));
  }

  /** The columns written; empty for a delete. */
  public List<String> columns() {
    return Collections.unmodifiableList(Arrays.asList(columns));
  }

  public boolean deleted() {
    return deleted;
  }

  /** True: merged from a changeset (apply or sync); false: a local write. */
  public boolean merged() {
    return merged;
  }

  /**
   * Null, or why a merge took the row out of its table: it breaks a declared constraint and
   * waits in the lattice_conflicts view ("unique", "check", "not_null", "foreign_key", "type",
   * "trigger"); {@link #deleted()} is then true.
   */
  public String conflict() {
    return conflict;
  }

  @Override
  public String toString() {
    return table + Arrays.toString(primaryKey) + (deleted ? " deleted" : " " + Arrays.toString(columns))
        + (merged ? " (merged)" : " (local)") + (conflict != null ? " held: " + conflict : "");
  }
}
