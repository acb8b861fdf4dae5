package dev.lattice;

import java.util.Objects;

/**
 * A prepared SQL statement on a replica (lattice_stmt). Bind parameters (1-based), step through
 * rows, read columns (0-based) of the current row; close it when done. Calls lock the replica.
 */
public final class Statement implements AutoCloseable {
  private final Replica replica;
  private long handle;

  Statement(Replica replica, long handle) {
    this.replica = replica;
    this.handle = handle;
  }

  public Statement bind(int index, long value) {
    synchronized (replica) {
      Native.stmtBindLong(live(), index, value);
    }
    return this;
  }

  public Statement bind(int index, double value) {
    synchronized (replica) {
      Native.stmtBindDouble(live(), index, value);
    }
    return this;
  }

  /** Binds text; null binds SQL NULL. */
  public Statement bind(int index, String value) {
    synchronized (replica) {
      if (value == null) {
        Native.stmtBindNull(live(), index);
      } else {
        Native.stmtBindText(live(), index, value);
      }
    }
    return this;
  }

  /** Binds a blob (copied); null binds SQL NULL. */
  public Statement bind(int index, byte[] value) {
    synchronized (replica) {
      if (value == null) {
        Native.stmtBindNull(live(), index);
      } else {
        Native.stmtBindBlob(live(), index, value);
      }
    }
    return this;
  }

  public Statement bindNull(int index) {
    synchronized (replica) {
      Native.stmtBindNull(live(), index);
    }
    return this;
  }

  /**
   * Runs to the next row: true when one is ready, false when done (stepping again restarts).
   * Throws SQL (a constraint), BUSY, SCHEMA, ...; reset before stepping again after an error.
   */
  public boolean step() {
    synchronized (replica) {
      return Native.stmtStep(live());
    }
  }

  /** Steps to completion, for a write. */
  public void execute() {
    synchronized (replica) {
      while (Native.stmtStep(live())) {}
    }
  }

  /** Rewinds to before the first row, keeping the bindings. */
  public Statement reset() {
    synchronized (replica) {
      Native.stmtReset(live());
    }
    return this;
  }

  public Statement clearBindings() {
    synchronized (replica) {
      Native.stmtClearBindings(live());
    }
    return this;
  }

  public int columnCount() {
    synchronized (replica) {
      return Native.stmtColumnCount(live());
    }
  }

  public String columnName(int index) {
    synchronized (replica) {
      return Native.stmtColumnName(live(), index);
    }
  }

  /** Column {@code index} of the current row: Long, Double, String, byte[] or null. */
  public Object get(int index) {
    synchronized (replica) {
      return Native.stmtColumn(live(), index);
    }
  }

  public boolean isNull(int index) {
    return get(index) == null;
  }

  /** An INTEGER column (a REAL is truncated; NULL is 0). Throws TYPE_MISMATCH for text/blob. */
  public long getLong(int index) {
    Object v = get(index);
    if (v == null) return 0;
    if (v instanceof Number) return ((Number) v).longValue();
    throw mismatch(index, v, "a number");
  }

  /** A REAL or INTEGER column (NULL is 0). Throws TYPE_MISMATCH for text/blob. */
  public double getDouble(int index) {
    Object v = get(index);
    if (v == null) return 0;
    if (v instanceof Number) return ((Number) v).doubleValue();
    throw mismatch(index, v, "a number");
  }

  /** A TEXT column, or a number as text; null for NULL. Throws TYPE_MISMATCH for a blob. */
  public String getString(int index) {
    Object v = get(index);
    if (v == null || v instanceof String) return (String) v;
    if (v instanceof Number) return v.toString();
    throw mismatch(index, v, "text");
  }

  /** A BLOB column; null for NULL. Throws TYPE_MISMATCH otherwise. */
  public byte[] getBlob(int index) {
    Object v = get(index);
    if (v == null || v instanceof byte[]) return (byte[]) v;
    throw mismatch(index, v, "a blob");
  }

  /** Finalizes the statement. Idempotent; fine after the replica was closed. */
  @Override
  public void close() {
    synchronized (replica) {
      if (handle != 0) {
        long h = handle;
        handle = 0;
        Native.stmtFinalize(h);
      }
    }
  }

  private long live() {
    if (handle == 0) throw new LatticeException(LatticeException.STATE, "the statement is closed");
    replica.live(); // closed replica or inside a listener: STATE
    return handle;
  }

  private LatticeException mismatch(int index, Object v, String wanted) {
    Objects.requireNonNull(v);
    return new LatticeException(LatticeException.TYPE_MISMATCH,
        "column " + index + " holds " + v.getClass().getSimpleName() + ", not " + wanted);
  }
}
