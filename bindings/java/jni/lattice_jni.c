/* The JNI layer under the dev.lattice Java classes: each native method of dev.lattice.Native
 * calls the C API (lattice/lattice.h) and nothing else.
 *
 * - Handles cross as Java longs: a pointer to a small wrapper (JReplica, JSync) that also holds
 *   the global references the callbacks need, or the lattice_stmt itself.
 * - A failed C call throws dev.lattice.LatticeException(code, message) and the native method
 *   returns at once; Java-side argument checks happen before the call, in the Java classes.
 * - Strings cross as standard UTF-8 (String.getBytes(UTF_8) and new String(bytes, UTF_8)), not
 *   JNI's modified UTF-8, so NUL characters and characters outside the BMP survive.
 * - Change callbacks run on the Java thread that made the replica call; an exception thrown by a
 *   listener is held in a thread-local and rethrown when that call returns.
 * - Sync status callbacks run on the sync client's native thread, attached to the JVM (as a
 *   daemon named "lattice-sync") the first time and detached when the thread exits, through a
 *   pthread key destructor. Listener exceptions there are printed and cleared. */
#include <jni.h>
#include <lattice/lattice.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Cached classes and methods (JNI_OnLoad, so native threads see the app's classes) ---- */

static JavaVM* g_vm;
static jclass g_exception_class;   /* dev.lattice.LatticeException */
static jmethodID g_exception_init; /* (ILjava/lang/String;)V */
static jclass g_string_class;
static jmethodID g_string_init;      /* String(byte[], Charset) */
static jmethodID g_string_get_bytes; /* byte[] getBytes(Charset) */
static jobject g_utf8;               /* StandardCharsets.UTF_8 */
static jclass g_long_class;
static jmethodID g_long_value_of;
static jclass g_double_class;
static jmethodID g_double_value_of;
static jclass g_object_class;
static jclass g_change_class; /* dev.lattice.Change */
static jmethodID g_change_init;
static jmethodID g_change_dispatch; /* dev.lattice.Replica$Dispatcher.dispatch(Change[]) */
static jclass g_status_class;       /* dev.lattice.SyncStatus */
static jmethodID g_status_init;
static jmethodID g_status_dispatch; /* dev.lattice.SyncListener.onStatus(SyncStatus) */
static jmethodID g_token_renew;     /* dev.lattice.TokenRenewer.renew(String) */
static jmethodID g_throwable_add_suppressed;
static pthread_key_t g_detach_key;

/* An exception a change listener threw, waiting for the replica call to return. */
static _Thread_local jthrowable tl_listener_error;
/* The sync client whose status callback runs on this thread, if any. */
static _Thread_local const void* tl_in_sync_callback;

static jclass global_class(JNIEnv* env, const char* name) {
  jclass local = (*env)->FindClass(env, name);
  if (!local) return NULL;
  jclass global = (jclass)(*env)->NewGlobalRef(env, local);
  (*env)->DeleteLocalRef(env, local);
  return global;
}

static void detach_thread(void* vm) {
  if (vm) (*(JavaVM*)vm)->DetachCurrentThread((JavaVM*)vm);
}

JNIEXPORT jint JNICALL JNI_OnLoad(JavaVM* vm, void* reserved) {
  (void)reserved;
  JNIEnv* env = NULL;
  if ((*vm)->GetEnv(vm, (void**)&env, JNI_VERSION_1_6) != JNI_OK) return JNI_ERR;
  g_vm = vm;
  if (pthread_key_create(&g_detach_key, detach_thread) != 0) return JNI_ERR;
  if (!(g_exception_class = global_class(env, "dev/lattice/LatticeException")) ||
      !(g_string_class = global_class(env, "java/lang/String")) ||
      !(g_long_class = global_class(env, "java/lang/Long")) ||
      !(g_double_class = global_class(env, "java/lang/Double")) ||
      !(g_object_class = global_class(env, "java/lang/Object")) ||
      !(g_change_class = global_class(env, "dev/lattice/Change")) ||
      !(g_status_class = global_class(env, "dev/lattice/SyncStatus")))
    return JNI_ERR;
  g_exception_init =
      (*env)->GetMethodID(env, g_exception_class, "<init>", "(ILjava/lang/String;)V");
  g_string_init =
      (*env)->GetMethodID(env, g_string_class, "<init>", "([BLjava/nio/charset/Charset;)V");
  g_string_get_bytes =
      (*env)->GetMethodID(env, g_string_class, "getBytes", "(Ljava/nio/charset/Charset;)[B");
  g_long_value_of = (*env)->GetStaticMethodID(env, g_long_class, "valueOf", "(J)Ljava/lang/Long;");
  g_double_value_of =
      (*env)->GetStaticMethodID(env, g_double_class, "valueOf", "(D)Ljava/lang/Double;");
  g_change_init = (*env)->GetMethodID(env, g_change_class, "<init>",
                                      "(Ljava/lang/String;[Ljava/lang/Object;[Ljava/lang/String;ZZ"
                                      "Ljava/lang/String;)V");
  g_status_init = (*env)->GetMethodID(env, g_status_class, "<init>", "(IJZZLjava/lang/String;)V");
  jclass dispatcher = (*env)->FindClass(env, "dev/lattice/Replica$Dispatcher");
  if (!dispatcher) return JNI_ERR;
  g_change_dispatch = (*env)->GetMethodID(env, dispatcher, "dispatch", "([Ldev/lattice/Change;)V");
  (*env)->DeleteLocalRef(env, dispatcher);
  jclass listener = (*env)->FindClass(env, "dev/lattice/SyncListener");
  if (!listener) return JNI_ERR;
  g_status_dispatch = (*env)->GetMethodID(env, listener, "onStatus", "(Ldev/lattice/SyncStatus;)V");
  (*env)->DeleteLocalRef(env, listener);
  jclass renewer = (*env)->FindClass(env, "dev/lattice/TokenRenewer");
  if (!renewer) return JNI_ERR;
  g_token_renew =
      (*env)->GetMethodID(env, renewer, "renew", "(Ljava/lang/String;)Ljava/lang/String;");
  (*env)->DeleteLocalRef(env, renewer);
  jclass throwable = (*env)->FindClass(env, "java/lang/Throwable");
  if (!throwable) return JNI_ERR;
  g_throwable_add_suppressed =
      (*env)->GetMethodID(env, throwable, "addSuppressed", "(Ljava/lang/Throwable;)V");
  (*env)->DeleteLocalRef(env, throwable);
  jclass charsets = (*env)->FindClass(env, "java/nio/charset/StandardCharsets");
  if (!charsets) return JNI_ERR;
  jfieldID utf8_field =
      (*env)->GetStaticFieldID(env, charsets, "UTF_8", "Ljava/nio/charset/Charset;");
  if (!utf8_field) return JNI_ERR;
  jobject utf8 = (*env)->GetStaticObjectField(env, charsets, utf8_field);
  g_utf8 = (*env)->NewGlobalRef(env, utf8);
  (*env)->DeleteLocalRef(env, utf8);
  (*env)->DeleteLocalRef(env, charsets);
  if (!g_exception_init || !g_string_init || !g_string_get_bytes || !g_long_value_of ||
      !g_double_value_of || !g_change_init || !g_status_init || !g_change_dispatch ||
      !g_status_dispatch || !g_token_renew || !g_throwable_add_suppressed || !g_utf8)
    return JNI_ERR;
  return JNI_VERSION_1_6;
}

/* ---- Strings and errors ------------------------------------------------------------------- */

/* A Java String from `size` bytes of UTF-8 (malformed bytes become U+FFFD); NULL with an
 * exception pending on failure. */
static jstring new_string(JNIEnv* env, const char* bytes, size_t size) {
  if (size > (size_t)INT32_MAX) size = (size_t)INT32_MAX;
  jbyteArray array = (*env)->NewByteArray(env, (jsize)size);
  if (!array) return NULL;
  if (size) (*env)->SetByteArrayRegion(env, array, 0, (jsize)size, (const jbyte*)bytes);
  jstring s = (jstring)(*env)->NewObject(env, g_string_class, g_string_init, array, g_utf8);
  (*env)->DeleteLocalRef(env, array);
  return s;
}

/* Copies `s` as NUL-terminated UTF-8 into a malloc'd `*out` (NULL for a null `s`), its length
 * without the NUL into `*size` when not NULL. False with an exception pending on failure. */
static bool to_utf8(JNIEnv* env, jstring s, char** out, size_t* size) {
  *out = NULL;
  if (size) *size = 0;
  if (!s) return true;
  jbyteArray array = (jbyteArray)(*env)->CallObjectMethod(env, s, g_string_get_bytes, g_utf8);
  if ((*env)->ExceptionCheck(env)) return false;
  const jsize n = (*env)->GetArrayLength(env, array);
  char* copy = (char*)malloc((size_t)n + 1);
  if (!copy) {
    (*env)->DeleteLocalRef(env, array);
    jclass oom = (*env)->FindClass(env, "java/lang/OutOfMemoryError");
    if (oom) (*env)->ThrowNew(env, oom, "copying a string for Lattice");
    return false;
  }
  (*env)->GetByteArrayRegion(env, array, 0, n, (jbyte*)copy);
  (*env)->DeleteLocalRef(env, array);
  copy[n] = '\0';
  *out = copy;
  if (size) *size = (size_t)n;
  return true;
}

static void throw_code(JNIEnv* env, lattice_code code, const char* message) {
  if ((*env)->ExceptionCheck(env)) return;
  jstring text = new_string(env, message, strlen(message));
  if (!text) return;
  jthrowable e =
      (jthrowable)(*env)->NewObject(env, g_exception_class, g_exception_init, (jint)code, text);
  (*env)->DeleteLocalRef(env, text);
  if (e) {
    (*env)->Throw(env, e);
    (*env)->DeleteLocalRef(env, e);
  }
}

static void throw_error(JNIEnv* env, const lattice_error* error) {
  throw_code(env, error->code, error->message);
}

/* Throws the exception a change listener raised during the call that just returned, if any:
 * on its own, or as suppressed by the exception already pending. True when one was held. */
static bool rethrow_listener_error(JNIEnv* env) {
  jthrowable held = tl_listener_error;
  if (!held) return false;
  tl_listener_error = NULL;
  jthrowable pending = (*env)->ExceptionOccurred(env);
  if (pending) {
    (*env)->ExceptionClear(env);
    (*env)->CallVoidMethod(env, pending, g_throwable_add_suppressed, held);
    (*env)->ExceptionClear(env);
    (*env)->Throw(env, pending);
    (*env)->DeleteLocalRef(env, pending);
  } else {
    (*env)->Throw(env, held);
  }
  (*env)->DeleteGlobalRef(env, held);
  return true;
}

/* The String of an owned text buffer a call filled, which it frees; or, when the call failed,
 * NULL with its error thrown. */
static jstring text_result(JNIEnv* env, lattice_code code, lattice_buffer* out,
                           const lattice_error* error) {
  if (code != LATTICE_OK) {
    throw_error(env, error);
    return NULL;
  }
  jstring s = new_string(env, (const char*)out->data, out->size);
  lattice_buffer_free(out);
  return s;
}

/* Text or blob bytes the C API handed out, or NULL with an exception pending. */
static jbyteArray new_bytes(JNIEnv* env, const void* data, size_t size) {
  if (size > (size_t)INT32_MAX) {
    throw_code(env, LATTICE_ERR_TOO_LARGE, "more than 2 GiB for one Java byte array");
    return NULL;
  }
  jbyteArray array = (*env)->NewByteArray(env, (jsize)size);
  if (array && size) (*env)->SetByteArrayRegion(env, array, 0, (jsize)size, (const jbyte*)data);
  return array;
}

/* Long, Double, String, byte[] or null for a value. NULL with an exception pending on failure
 * (check ExceptionCheck: a SQL NULL is also NULL). */
static jobject value_to_object(JNIEnv* env, const lattice_value* value) {
  switch (value->type) {
    case LATTICE_INTEGER:
      return (*env)->CallStaticObjectMethod(env, g_long_class, g_long_value_of,
                                            (jlong)value->integer);
    case LATTICE_REAL:
      return (*env)->CallStaticObjectMethod(env, g_double_class, g_double_value_of,
                                            (jdouble)value->real);
    case LATTICE_TEXT:
      return new_string(env, value->bytes, value->size);
    case LATTICE_BLOB:
      return new_bytes(env, value->bytes, value->size);
    case LATTICE_NULL:
    default:
      return NULL;
  }
}

static JNIEnv* current_env(void) {
  JNIEnv* env = NULL;
  if ((*g_vm)->GetEnv(g_vm, (void**)&env, JNI_VERSION_1_6) == JNI_OK) return env;
  /* A thread the JVM does not know: attach it once, detach when it exits. */
  JavaVMAttachArgs args = {JNI_VERSION_1_6, (char*)"lattice-sync", NULL};
  if ((*g_vm)->AttachCurrentThreadAsDaemon(g_vm, (void**)&env, &args) != JNI_OK) return NULL;
  pthread_setspecific(g_detach_key, g_vm);
  return env;
}

#define HANDLE(type, h) ((type*)(intptr_t)(h))

/* ---- Library -------------------------------------------------------------------------------- */

JNIEXPORT jint JNICALL Java_dev_lattice_Native_apiVersion(JNIEnv* env, jclass cls) {
  (void)env;
  (void)cls;
  return lattice_api_version();
}

JNIEXPORT jstring JNICALL Java_dev_lattice_Native_codeName(JNIEnv* env, jclass cls, jint code) {
  (void)cls;
  const char* name = lattice_error_code_name(code);
  return new_string(env, name, strlen(name));
}

/* ---- Replicas ------------------------------------------------------------------------------- */

typedef struct Subscription {
  int id;
  jobject dispatcher; /* global ref to the Replica.Dispatcher */
  struct Subscription* next;
} Subscription;

typedef struct JReplica {
  lattice_replica* replica;
  Subscription* subscriptions;
} JReplica;

static void free_subscriptions(JNIEnv* env, JReplica* r) {
  while (r->subscriptions) {
    Subscription* s = r->subscriptions;
    r->subscriptions = s->next;
    (*env)->DeleteGlobalRef(env, s->dispatcher);
    free(s);
  }
}

/* A key for lattice_replica_options.encryption_key: NULL for none, else 32 bytes copied into
 * `out`; false, with an exception pending, for another length. */
static bool read_key(JNIEnv* env, jbyteArray key, const char* what, uint8_t out[32],
                     const uint8_t** result) {
  *result = NULL;
  if (!key) return true;
  if ((*env)->GetArrayLength(env, key) != 32) {
    char message[64];
    snprintf(message, sizeof message, "%s must be 32 bytes", what);
    throw_code(env, LATTICE_ERR_INVALID_ARGUMENT, message);
    return false;
  }
  (*env)->GetByteArrayRegion(env, key, 0, 32, (jbyte*)out);
  *result = out;
  return true;
}

JNIEXPORT jlong JNICALL Java_dev_lattice_Native_replicaOpen(JNIEnv* env, jclass cls, jstring path,
                                                            jstring synchronous,
                                                            jint busy_timeout_ms,
                                                            jbyteArray encryption_key) {
  (void)cls;
  char *c_path = NULL, *c_sync = NULL;
  uint8_t key[32];
  const uint8_t* key_or_null = NULL;
  if (!read_key(env, encryption_key, "encryptionKey", key, &key_or_null)) return 0;
  if (!to_utf8(env, path, &c_path, NULL) || !to_utf8(env, synchronous, &c_sync, NULL)) {
    free(c_path);
    return 0;
  }
  JReplica* r = (JReplica*)calloc(1, sizeof *r);
  if (!r) {
    free(c_path);
    free(c_sync);
    throw_code(env, LATTICE_ERR_INTERNAL, "out of memory");
    return 0;
  }
  lattice_replica_options options = LATTICE_REPLICA_OPTIONS_INIT;
  options.synchronous = c_sync;
  options.busy_timeout_ms = busy_timeout_ms;
  options.encryption_key = key_or_null;
  lattice_error error;
  r->replica = lattice_replica_open(c_path, &options, &error);
  memset(key, 0, sizeof key);
  free(c_path);
  free(c_sync);
  if (!r->replica) {
    free(r);
    throw_error(env, &error);
    return 0;
  }
  return (jlong)(intptr_t)r;
}

JNIEXPORT void JNICALL Java_dev_lattice_Native_replicaFree(JNIEnv* env, jclass cls, jlong h) {
  (void)cls;
  JReplica* r = HANDLE(JReplica, h);
  if (!r) return;
  lattice_replica_free(r->replica);
  free_subscriptions(env, r);
  free(r);
}

JNIEXPORT void JNICALL Java_dev_lattice_Native_replicaExec(JNIEnv* env, jclass cls, jlong h,
                                                           jstring sql) {
  (void)cls;
  char* c_sql = NULL;
  if (!to_utf8(env, sql, &c_sql, NULL)) return;
  lattice_error error;
  if (lattice_replica_exec(HANDLE(JReplica, h)->replica, c_sql, &error) != LATTICE_OK)
    throw_error(env, &error);
  free(c_sql);
  rethrow_listener_error(env);
}

JNIEXPORT void JNICALL Java_dev_lattice_Native_replicaRotateKey(JNIEnv* env, jclass cls, jlong h,
                                                                jbyteArray new_key) {
  (void)cls;
  uint8_t key[32];
  const uint8_t* key_or_null = NULL;
  if (!new_key) {
    throw_code(env, LATTICE_ERR_INVALID_ARGUMENT, "newKey is null");
    return;
  }
  if (!read_key(env, new_key, "newKey", key, &key_or_null)) return;
  lattice_error error;
  const lattice_code code =
      lattice_replica_rotate_key(HANDLE(JReplica, h)->replica, key_or_null, &error);
  memset(key, 0, sizeof key);
  if (code != LATTICE_OK) throw_error(env, &error);
}

JNIEXPORT void JNICALL Java_dev_lattice_Native_replicaReplicate(JNIEnv* env, jclass cls, jlong h,
                                                                jstring table, jstring types) {
  (void)cls;
  char *c_table = NULL, *c_types = NULL;
  if (to_utf8(env, table, &c_table, NULL) && to_utf8(env, types, &c_types, NULL)) {
    lattice_error error;
    if (lattice_replica_replicate(HANDLE(JReplica, h)->replica, c_table, c_types, &error) !=
        LATTICE_OK)
      throw_error(env, &error);
  }
  free(c_table);
  free(c_types);
}

JNIEXPORT jboolean JNICALL Java_dev_lattice_Native_replicaMigrate(JNIEnv* env, jclass cls, jlong h,
                                                                  jlong version, jstring sql) {
  (void)cls;
  char* c_sql = NULL;
  bool ran = false;
  if (to_utf8(env, sql, &c_sql, NULL)) {
    lattice_error error;
    if (lattice_replica_migrate(HANDLE(JReplica, h)->replica, (int64_t)version, c_sql, &ran,
                                &error) != LATTICE_OK)
      throw_error(env, &error);
  }
  free(c_sql);
  rethrow_listener_error(env);
  return ran ? JNI_TRUE : JNI_FALSE;
}

JNIEXPORT jstring JNICALL Java_dev_lattice_Native_replicaVersionVector(JNIEnv* env, jclass cls,
                                                                       jlong h) {
  (void)cls;
  lattice_buffer out = {NULL, 0};
  lattice_error error;
  const lattice_code code =
      lattice_replica_version_vector(HANDLE(JReplica, h)->replica, &out, &error);
  return text_result(env, code, &out, &error);
}

JNIEXPORT jstring JNICALL Java_dev_lattice_Native_replicaSnapshot(JNIEnv* env, jclass cls, jlong h,
                                                                  jstring path, jboolean install) {
  (void)cls;
  char* c_path = NULL;
  if (!to_utf8(env, path, &c_path, NULL)) return NULL;
  lattice_buffer out = {NULL, 0};
  lattice_error error;
  lattice_replica* replica = HANDLE(JReplica, h)->replica;
  const lattice_code code = install
                                ? lattice_replica_install_snapshot(replica, c_path, &out, &error)
                                : lattice_replica_write_snapshot(replica, c_path, &out, &error);
  free(c_path);
  return text_result(env, code, &out, &error);
}

JNIEXPORT jbyteArray JNICALL Java_dev_lattice_Native_replicaChangesSince(JNIEnv* env, jclass cls,
                                                                         jlong h, jstring since,
                                                                         jlong max_changes) {
  (void)cls;
  char* c_since = NULL;
  if (!to_utf8(env, since, &c_since, NULL)) return NULL;
  lattice_buffer out = {NULL, 0};
  lattice_error error;
  jbyteArray bytes = NULL;
  if (lattice_replica_changes_since(HANDLE(JReplica, h)->replica, c_since, (size_t)max_changes,
                                    &out, &error) != LATTICE_OK)
    throw_error(env, &error);
  else
    bytes = new_bytes(env, out.data, out.size);
  free(c_since);
  lattice_buffer_free(&out);
  return bytes;
}

JNIEXPORT jlongArray JNICALL Java_dev_lattice_Native_replicaApply(JNIEnv* env, jclass cls, jlong h,
                                                                  jbyteArray changes) {
  (void)cls;
  const jsize n = (*env)->GetArrayLength(env, changes);
  jbyte* bytes = (jbyte*)malloc(n ? (size_t)n : 1);
  if (!bytes) {
    throw_code(env, LATTICE_ERR_INTERNAL, "out of memory copying a changeset");
    return NULL;
  }
  (*env)->GetByteArrayRegion(env, changes, 0, n, bytes);
  lattice_apply_result result = {0, 0};
  lattice_error error;
  const lattice_code code =
      lattice_replica_apply(HANDLE(JReplica, h)->replica, bytes, (size_t)n, &result, &error);
  free(bytes);
  jlongArray out = NULL;
  if (code != LATTICE_OK) {
    throw_error(env, &error);
  } else if ((out = (*env)->NewLongArray(env, 2)) != NULL) {
    const jlong counts[2] = {(jlong)result.received, (jlong)result.applied};
    (*env)->SetLongArrayRegion(env, out, 0, 2, counts);
  }
  if (rethrow_listener_error(env)) return NULL;
  return out;
}

/* Builds the dev.lattice.Change[] for one transaction and hands it to the subscription's
 * dispatcher. Runs on the thread of the replica call; everything in `changes` is borrowed. */
static void on_changes(void* context, const lattice_change* changes, size_t count) {
  Subscription* s = (Subscription*)context;
  JNIEnv* env = current_env();
  if (!env || count > (size_t)INT32_MAX) return;
  /* One frame for the whole call; each change's refs are released as it is stored. */
  if ((*env)->PushLocalFrame(env, 16) != 0) {
    (*env)->ExceptionClear(env);
    return;
  }
  /* The dispatcher may unsubscribe, which frees `s`: keep a local ref. */
  jobject dispatcher = (*env)->NewLocalRef(env, s->dispatcher);
  jobjectArray array = (*env)->NewObjectArray(env, (jsize)count, g_change_class, NULL);
  for (size_t i = 0; array && i < count && !(*env)->ExceptionCheck(env); ++i) {
    const lattice_change* c = &changes[i];
    jstring table = new_string(env, c->table, strlen(c->table));
    jobjectArray key =
        table ? (*env)->NewObjectArray(env, (jsize)c->primary_key_count, g_object_class, NULL)
              : NULL;
    for (size_t k = 0; key && k < c->primary_key_count; ++k) {
      jobject v = value_to_object(env, &c->primary_key[k]);
      if ((*env)->ExceptionCheck(env)) break;
      (*env)->SetObjectArrayElement(env, key, (jsize)k, v);
      (*env)->DeleteLocalRef(env, v);
    }
    jobjectArray columns =
        key && !(*env)->ExceptionCheck(env)
            ? (*env)->NewObjectArray(env, (jsize)c->column_count, g_string_class, NULL)
            : NULL;
    for (size_t k = 0; columns && k < c->column_count; ++k) {
      jstring name = new_string(env, c->columns[k], strlen(c->columns[k]));
      if (!name) break;
      (*env)->SetObjectArrayElement(env, columns, (jsize)k, name);
      (*env)->DeleteLocalRef(env, name);
    }
    jstring conflict = columns && c->conflict && !(*env)->ExceptionCheck(env)
                           ? new_string(env, c->conflict, strlen(c->conflict))
                           : NULL;
    if (columns && !(*env)->ExceptionCheck(env)) {
      jobject change = (*env)->NewObject(env, g_change_class, g_change_init, table, key, columns,
                                         (jboolean)c->deleted, (jboolean)c->merged, conflict);
      if (change) {
        (*env)->SetObjectArrayElement(env, array, (jsize)i, change);
        (*env)->DeleteLocalRef(env, change);
      }
    }
    if (conflict) (*env)->DeleteLocalRef(env, conflict);
    if (table) (*env)->DeleteLocalRef(env, table);
    if (key) (*env)->DeleteLocalRef(env, key);
    if (columns) (*env)->DeleteLocalRef(env, columns);
  }
  if (array && !(*env)->ExceptionCheck(env))
    (*env)->CallVoidMethod(env, dispatcher, g_change_dispatch, array);
  jthrowable thrown = (*env)->ExceptionOccurred(env);
  if (thrown) {
    /* The C API's callbacks must return normally: hold it for the replica call to rethrow. */
    (*env)->ExceptionClear(env);
    if (!tl_listener_error) tl_listener_error = (jthrowable)(*env)->NewGlobalRef(env, thrown);
  }
  (*env)->PopLocalFrame(env, NULL);
}

JNIEXPORT jint JNICALL Java_dev_lattice_Native_replicaSubscribe(JNIEnv* env, jclass cls, jlong h,
                                                                jobject dispatcher) {
  (void)cls;
  JReplica* r = HANDLE(JReplica, h);
  Subscription* s = (Subscription*)calloc(1, sizeof *s);
  if (!s || !(s->dispatcher = (*env)->NewGlobalRef(env, dispatcher))) {
    free(s);
    throw_code(env, LATTICE_ERR_INTERNAL, "out of memory");
    return 0;
  }
  lattice_error error;
  if (lattice_replica_subscribe(r->replica, on_changes, s, &s->id, &error) != LATTICE_OK) {
    (*env)->DeleteGlobalRef(env, s->dispatcher);
    free(s);
    throw_error(env, &error);
    return 0;
  }
  s->next = r->subscriptions;
  r->subscriptions = s;
  return s->id;
}

JNIEXPORT void JNICALL Java_dev_lattice_Native_replicaUnsubscribe(JNIEnv* env, jclass cls, jlong h,
                                                                  jint id) {
  (void)cls;
  JReplica* r = HANDLE(JReplica, h);
  lattice_error error;
  if (lattice_replica_unsubscribe(r->replica, id, &error) != LATTICE_OK) {
    throw_error(env, &error);
    return;
  }
  for (Subscription** at = &r->subscriptions; *at; at = &(*at)->next) {
    if ((*at)->id == id) {
      Subscription* s = *at;
      *at = s->next;
      (*env)->DeleteGlobalRef(env, s->dispatcher);
      free(s);
      return;
    }
  }
}

/* ---- Statements ----------------------------------------------------------------------------- */

JNIEXPORT jlong JNICALL Java_dev_lattice_Native_stmtPrepare(JNIEnv* env, jclass cls, jlong h,
                                                            jstring sql) {
  (void)cls;
  char* c_sql = NULL;
  if (!to_utf8(env, sql, &c_sql, NULL)) return 0;
  lattice_error error;
  lattice_stmt* stmt = lattice_stmt_prepare(HANDLE(JReplica, h)->replica, c_sql, &error);
  free(c_sql);
  if (!stmt) throw_error(env, &error);
  return (jlong)(intptr_t)stmt;
}

#define CHECK_CALL(call)                                \
  do {                                                  \
    lattice_error error;                                \
    if ((call) != LATTICE_OK) throw_error(env, &error); \
  } while (0)

JNIEXPORT void JNICALL Java_dev_lattice_Native_stmtBindLong(JNIEnv* env, jclass cls, jlong h,
                                                            jint index, jlong value) {
  (void)cls;
  CHECK_CALL(lattice_stmt_bind_int64(HANDLE(lattice_stmt, h), index, value, &error));
}

JNIEXPORT void JNICALL Java_dev_lattice_Native_stmtBindDouble(JNIEnv* env, jclass cls, jlong h,
                                                              jint index, jdouble value) {
  (void)cls;
  CHECK_CALL(lattice_stmt_bind_double(HANDLE(lattice_stmt, h), index, value, &error));
}

JNIEXPORT void JNICALL Java_dev_lattice_Native_stmtBindText(JNIEnv* env, jclass cls, jlong h,
                                                            jint index, jstring value) {
  (void)cls;
  char* text = NULL;
  size_t size = 0;
  if (!to_utf8(env, value, &text, &size)) return;
  CHECK_CALL(lattice_stmt_bind_text(HANDLE(lattice_stmt, h), index, text, size, &error));
  free(text);
}

JNIEXPORT void JNICALL Java_dev_lattice_Native_stmtBindBlob(JNIEnv* env, jclass cls, jlong h,
                                                            jint index, jbyteArray value) {
  (void)cls;
  const jsize n = (*env)->GetArrayLength(env, value);
  jbyte* bytes = (jbyte*)(*env)->GetPrimitiveArrayCritical(env, value, NULL);
  if (!bytes) return;
  lattice_error error;
  const lattice_code code =
      lattice_stmt_bind_blob(HANDLE(lattice_stmt, h), index, bytes, (size_t)n, &error);
  (*env)->ReleasePrimitiveArrayCritical(env, value, bytes, JNI_ABORT);
  if (code != LATTICE_OK) throw_error(env, &error);
}

JNIEXPORT void JNICALL Java_dev_lattice_Native_stmtBindNull(JNIEnv* env, jclass cls, jlong h,
                                                            jint index) {
  (void)cls;
  CHECK_CALL(lattice_stmt_bind_null(HANDLE(lattice_stmt, h), index, &error));
}

JNIEXPORT jboolean JNICALL Java_dev_lattice_Native_stmtStep(JNIEnv* env, jclass cls, jlong h) {
  (void)cls;
  lattice_error error;
  const lattice_code code = lattice_stmt_step(HANDLE(lattice_stmt, h), &error);
  if (code != LATTICE_ROW && code != LATTICE_DONE) throw_error(env, &error);
  if (rethrow_listener_error(env)) return JNI_FALSE;
  return code == LATTICE_ROW ? JNI_TRUE : JNI_FALSE;
}

JNIEXPORT void JNICALL Java_dev_lattice_Native_stmtReset(JNIEnv* env, jclass cls, jlong h) {
  (void)cls;
  CHECK_CALL(lattice_stmt_reset(HANDLE(lattice_stmt, h), &error));
}

JNIEXPORT void JNICALL Java_dev_lattice_Native_stmtClearBindings(JNIEnv* env, jclass cls, jlong h) {
  (void)cls;
  CHECK_CALL(lattice_stmt_clear_bindings(HANDLE(lattice_stmt, h), &error));
}

JNIEXPORT jint JNICALL Java_dev_lattice_Native_stmtColumnCount(JNIEnv* env, jclass cls, jlong h) {
  (void)env;
  (void)cls;
  return lattice_stmt_column_count(HANDLE(lattice_stmt, h));
}

JNIEXPORT jstring JNICALL Java_dev_lattice_Native_stmtColumnName(JNIEnv* env, jclass cls, jlong h,
                                                                 jint index) {
  (void)cls;
  lattice_error error;
  const char* name = lattice_stmt_column_name(HANDLE(lattice_stmt, h), index, &error);
  if (!name) {
    throw_error(env, &error);
    return NULL;
  }
  return new_string(env, name, strlen(name));
}

JNIEXPORT jobject JNICALL Java_dev_lattice_Native_stmtColumn(JNIEnv* env, jclass cls, jlong h,
                                                             jint index) {
  (void)cls;
  lattice_value value;
  lattice_error error;
  if (lattice_stmt_column(HANDLE(lattice_stmt, h), index, &value, &error) != LATTICE_OK) {
    throw_error(env, &error);
    return NULL;
  }
  return value_to_object(env, &value);
}

JNIEXPORT void JNICALL Java_dev_lattice_Native_stmtFinalize(JNIEnv* env, jclass cls, jlong h) {
  (void)env;
  (void)cls;
  lattice_stmt_finalize(HANDLE(lattice_stmt, h));
}

/* ---- Sync ----------------------------------------------------------------------------------- */

typedef struct JSync {
  lattice_sync* sync;
  jobject listener; /* global ref to the SyncListener, or NULL */
  jobject renewer;  /* global ref to the TokenRenewer, or NULL */
} JSync;

/* Runs on the sync client's own thread when the relay refused the token. */
static bool renew_token(void* context, const char* reason, char* out, size_t capacity) {
  JSync* s = (JSync*)context;
  JNIEnv* env = current_env();
  if (!env) return false;
  if ((*env)->PushLocalFrame(env, 8) != 0) {
    (*env)->ExceptionClear(env);
    return false;
  }
  bool renewed = false;
  jstring why = new_string(env, reason, strlen(reason));
  jstring token =
      why ? (jstring)(*env)->CallObjectMethod(env, s->renewer, g_token_renew, why) : NULL;
  if ((*env)->ExceptionCheck(env)) {
    (*env)->ExceptionDescribe(env);
    (*env)->ExceptionClear(env);
  } else if (token) {
    char* c_token = NULL;
    size_t size = 0;
    if (to_utf8(env, token, &c_token, &size) && c_token && size > 0 && size < capacity) {
      memcpy(out, c_token, size + 1);
      renewed = true;
    }
    free(c_token);
    if ((*env)->ExceptionCheck(env)) (*env)->ExceptionClear(env);
  }
  (*env)->PopLocalFrame(env, NULL);
  return renewed;
}

/* Runs on the sync client's own thread, one call at a time. */
static void on_status(void* context, const lattice_sync_status* status) {
  JSync* s = (JSync*)context;
  JNIEnv* env = current_env();
  if (!env) return;
  if ((*env)->PushLocalFrame(env, 8) != 0) {
    (*env)->ExceptionClear(env);
    return;
  }
  const char* last = status->last_error ? status->last_error : "";
  jstring last_error = new_string(env, last, strlen(last));
  jobject snapshot =
      last_error ? (*env)->NewObject(env, g_status_class, g_status_init, (jint)status->state,
                                     (jlong)status->pending, (jboolean)status->in_sync,
                                     (jboolean)status->fatal, last_error)
                 : NULL;
  if (snapshot) {
    tl_in_sync_callback = s;
    (*env)->CallVoidMethod(env, s->listener, g_status_dispatch, snapshot);
    tl_in_sync_callback = NULL;
  }
  if ((*env)->ExceptionCheck(env)) {
    /* Nobody to rethrow it to on this thread: report it like an uncaught exception. */
    (*env)->ExceptionDescribe(env);
    (*env)->ExceptionClear(env);
  }
  (*env)->PopLocalFrame(env, NULL);
}

JNIEXPORT jlong JNICALL Java_dev_lattice_Native_syncStart(
    JNIEnv* env, jclass cls, jstring path, jstring url, jstring token, jstring ca_file,
    jboolean allow_insecure_remote, jint min_backoff_ms, jint max_backoff_ms, jint poll_interval_ms,
    jint connect_timeout_ms, jobject listener, jobject renewer, jboolean no_snapshot,
    jbyteArray encryption_key) {
  (void)cls;
  char *c_path = NULL, *c_url = NULL, *c_token = NULL, *c_ca = NULL;
  JSync* s = NULL;
  uint8_t key[32];
  const uint8_t* key_or_null = NULL;
  if (!read_key(env, encryption_key, "encryptionKey", key, &key_or_null)) return 0;
  if (!to_utf8(env, path, &c_path, NULL) || !to_utf8(env, url, &c_url, NULL) ||
      !to_utf8(env, token, &c_token, NULL) || !to_utf8(env, ca_file, &c_ca, NULL))
    goto done;
  if (!(s = (JSync*)calloc(1, sizeof *s))) {
    throw_code(env, LATTICE_ERR_INTERNAL, "out of memory");
    goto done;
  }
  lattice_sync_options options = LATTICE_SYNC_OPTIONS_INIT;
  options.ca_file = c_ca;
  options.allow_insecure_remote = allow_insecure_remote;
  options.min_backoff_ms = min_backoff_ms;
  options.max_backoff_ms = max_backoff_ms;
  options.poll_interval_ms = poll_interval_ms;
  options.connect_timeout_ms = connect_timeout_ms;
  options.no_snapshot = no_snapshot;
  options.encryption_key = key_or_null;
  if (listener) {
    if (!(s->listener = (*env)->NewGlobalRef(env, listener))) {
      free(s);
      s = NULL;
      throw_code(env, LATTICE_ERR_INTERNAL, "out of memory");
      goto done;
    }
    options.on_status = on_status;
    options.context = s;
  }
  if (renewer) {
    if (!(s->renewer = (*env)->NewGlobalRef(env, renewer))) {
      if (s->listener) (*env)->DeleteGlobalRef(env, s->listener);
      free(s);
      s = NULL;
      throw_code(env, LATTICE_ERR_INTERNAL, "out of memory");
      goto done;
    }
    options.renew_token = renew_token;
    options.renew_context = s;
  }
  lattice_error error;
  s->sync = lattice_sync_start(c_path, c_url, c_token, &options, &error);
  if (!s->sync) {
    if (s->listener) (*env)->DeleteGlobalRef(env, s->listener);
    if (s->renewer) (*env)->DeleteGlobalRef(env, s->renewer);
    free(s);
    s = NULL;
    throw_error(env, &error);
  }
done:
  free(c_path);
  free(c_url);
  free(c_token);
  free(c_ca);
  return (jlong)(intptr_t)s;
}

/* The C API forbids stopping or freeing a client from its own status callback (it would join
 * its own thread): refuse with STATE instead. */
static bool refuse_in_callback(JNIEnv* env, const JSync* s, const char* what) {
  if (tl_in_sync_callback != s) return false;
  char message[128];
  snprintf(message, sizeof message, "%s called from the client's own sync listener", what);
  throw_code(env, LATTICE_ERR_STATE, message);
  return true;
}

JNIEXPORT void JNICALL Java_dev_lattice_Native_syncStop(JNIEnv* env, jclass cls, jlong h) {
  (void)cls;
  JSync* s = HANDLE(JSync, h);
  if (refuse_in_callback(env, s, "SyncClient.stop()")) return;
  lattice_sync_stop(s->sync);
}

JNIEXPORT void JNICALL Java_dev_lattice_Native_syncFree(JNIEnv* env, jclass cls, jlong h) {
  (void)cls;
  JSync* s = HANDLE(JSync, h);
  if (!s || refuse_in_callback(env, s, "SyncClient.close()")) return;
  lattice_sync_free(s->sync); /* joins the thread: no callback runs after this */
  if (s->listener) (*env)->DeleteGlobalRef(env, s->listener);
  if (s->renewer) (*env)->DeleteGlobalRef(env, s->renewer);
  free(s);
}

JNIEXPORT jint JNICALL Java_dev_lattice_Native_syncState(JNIEnv* env, jclass cls, jlong h) {
  (void)env;
  (void)cls;
  return (jint)lattice_sync_get_state(HANDLE(JSync, h)->sync);
}

JNIEXPORT jlong JNICALL Java_dev_lattice_Native_syncPending(JNIEnv* env, jclass cls, jlong h) {
  (void)env;
  (void)cls;
  return (jlong)lattice_sync_get_pending(HANDLE(JSync, h)->sync);
}

JNIEXPORT jstring JNICALL Java_dev_lattice_Native_syncLastError(JNIEnv* env, jclass cls, jlong h) {
  (void)cls;
  lattice_buffer out = {NULL, 0};
  lattice_error error;
  const lattice_code code = lattice_sync_get_last_error(HANDLE(JSync, h)->sync, &out, &error);
  return text_result(env, code, &out, &error);
}

JNIEXPORT jboolean JNICALL Java_dev_lattice_Native_syncWaitInSync(JNIEnv* env, jclass cls, jlong h,
                                                                  jint timeout_ms) {
  (void)cls;
  bool in_sync = false;
  lattice_error error;
  if (lattice_sync_wait_in_sync(HANDLE(JSync, h)->sync, timeout_ms, &in_sync, &error) != LATTICE_OK)
    throw_error(env, &error);
  return in_sync ? JNI_TRUE : JNI_FALSE;
}
