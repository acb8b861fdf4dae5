package dev.lattice;

/**
 * A failed Lattice call: the C API's error code (one of the constants below, the numbers of
 * lattice.h's LATTICE_ERR_*) and its message naming what was wrong.
 *
 * <p>Unchecked, like SQLiteException on Android: most calls can fail only on a programming
 * error or a broken file, and a checked exception on every statement step would push callers
 * to wrap and swallow it. Callers that can recover (a changeset from the network that does not
 * decode, a busy database) catch it and look at {@link #code()}.
 */
public class LatticeException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  public static final int INVALID_ARGUMENT = 1;
  public static final int CORRUPT = 2;
  public static final int UNSUPPORTED_VERSION = 3;
  public static final int TOO_LARGE = 4;
  public static final int UNKNOWN_TABLE = 5;
  public static final int UNKNOWN_COLUMN = 6;
  public static final int TYPE_MISMATCH = 7;
  public static final int CLOCK_DRIFT = 8;
  public static final int SQL = 9;
  public static final int IO = 10;
  public static final int BUSY = 11;
  public static final int SCHEMA = 12;
  public static final int STATE = 13;
  public static final int INTERNAL = 14;
  public static final int UNAUTHORIZED = 15;
  public static final int FORBIDDEN = 16;
  public static final int COPIED_REPLICA = 17;
  public static final int KEY = 18;

  private final int code;

  /** Called from native code and by the Java classes for a closed handle. */
  public LatticeException(int code, String message) {
    super(message);
    this.code = code;
  }

  /** The error code, e.g. {@link #SQL}. */
  public int code() {
    return code;
  }

  /** The code's stable name, e.g. "sql". */
  public String codeName() {
    return Native.codeName(code);
  }

  @Override
  public String toString() {
    return "LatticeException(" + codeName() + "): " + getMessage();
  }
}
