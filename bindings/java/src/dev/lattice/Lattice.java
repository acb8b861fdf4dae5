package dev.lattice;

/** The library as a whole: its C API version. */
public final class Lattice {
  private Lattice() {}

  /** LATTICE_API_VERSION as the native library was built. */
  public static int apiVersion() {
    return Native.apiVersion();
  }

  /** The C API's stable name for a result code ("ok", "sql", "corrupt", ...). */
  public static String codeName(int code) {
    return Native.codeName(code);
  }
}
