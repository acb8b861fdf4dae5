/* A C application of an installed Lattice: two replicas, a write on one, its changeset applied to
 * the other. Prints "consumer ok: <title>" and exits 0 when it all worked. */
#include <lattice/lattice.h>
#include <stdio.h>

static int fail(const char* what, const lattice_error* error) {
  fprintf(stderr, "consumer: %s: %s: %s\n", what, lattice_error_code_name(error->code),
          error->message);
  return 1;
}

int main(void) {
  lattice_error error;
  lattice_replica* phone = lattice_replica_open(":memory:", NULL, &error);
  if (!phone) return fail("open", &error);
  lattice_replica* laptop = lattice_replica_open(":memory:", NULL, &error);
  if (!laptop) return fail("open", &error);
  lattice_replica* both[] = {phone, laptop};
  for (int i = 0; i < 2; ++i) {
    if (lattice_replica_exec(both[i], "CREATE TABLE todo(id TEXT PRIMARY KEY, title TEXT)",
                             &error) != LATTICE_OK ||
        lattice_replica_replicate(both[i], "todo", NULL, &error) != LATTICE_OK)
      return fail("schema", &error);
  }
  lattice_stmt* insert =
      lattice_stmt_prepare(phone, "INSERT INTO todo(id, title) VALUES (?, ?)", &error);
  if (!insert || lattice_stmt_bind_text(insert, 1, "a", SIZE_MAX, &error) != LATTICE_OK ||
      lattice_stmt_bind_text(insert, 2, "buy milk", SIZE_MAX, &error) != LATTICE_OK ||
      lattice_stmt_step(insert, &error) != LATTICE_DONE)
    return fail("insert", &error);
  lattice_stmt_finalize(insert);

  lattice_buffer changes = {NULL, 0};
  if (lattice_replica_changes_since(phone, NULL, 0, &changes, &error) != LATTICE_OK)
    return fail("changes_since", &error);
  if (lattice_replica_apply(laptop, changes.data, changes.size, NULL, &error) != LATTICE_OK)
    return fail("apply", &error);
  lattice_buffer_free(&changes);

  lattice_stmt* select = lattice_stmt_prepare(laptop, "SELECT title FROM todo", &error);
  lattice_value title;
  if (!select || lattice_stmt_step(select, &error) != LATTICE_ROW ||
      lattice_stmt_column(select, 0, &title, &error) != LATTICE_OK)
    return fail("select", &error);
  printf("consumer ok: %s\n", title.bytes);
  lattice_stmt_finalize(select);
  lattice_replica_free(phone);
  lattice_replica_free(laptop);
  return 0;
}
