// Calling into JS from libuv callbacks (threadpool completions, fd readiness), where no JS
// frame lies below to throw to.
//
// Only the C API, every status checked. node-addon-api's wrappers turn a failed call into
// Napi::Error::New(env), and on a worker thread that is being terminated the pending
// "exception" is no object, so that error's constructor ends in NAPI_FATAL_IF_FAILED: a fatal
// abort of the whole process ("Error::Error napi_define_properties", seen in fresh-clone CI
// from PoolCall::Complete, and reproduced by test/unit/native-worker.test.ts).
#pragma once

#include <node_api.h>

#include <cstddef>

namespace vhost_rt {

/**
 * Builds `new cls("<syscall>: <strerror>")` (cls as given to setErrorClass, else Error) with
 * code, errno and syscall set; `detail` replaces the strerror text when given. Returns nullptr
 * when the env refuses, as a terminating worker's does. ErrnoError wraps it for the paths
 * that throw to a JS caller.
 */
napi_value TryErrnoError(napi_env env, const char* syscall, int err,
                         const char* detail = nullptr);

/** The non-template part of CallFromLoop, run inside its handle scope. */
void CallInScope(napi_env env, napi_ref recv_ref, napi_ref fn_ref, napi_async_context context,
                 size_t argc, const napi_value* argv);

/**
 * Calls `fn` (held by `fn_ref`) with `argv`, `recv` as this (the global object when null),
 * inside `context` (napi_make_callback: async hooks and the microtask queue run as for any
 * callback from the loop; null: a plain call, for threadpool completions, which Node already
 * runs in a callback scope). Opens its own handle scope. An exception the callback throws is
 * reported as uncaught (the thread's 'error'); when the env can no longer run JS, nothing is
 * delivered and nothing is fatal.
 *
 * `make_args(env, argv)` fills argv (up to 4 values) inside that scope and returns their
 * count, or -1 if it could not build them; it may not throw.
 */
template <typename MakeArgs>
void CallFromLoop(napi_env env, napi_ref recv_ref, napi_ref fn_ref, napi_async_context context,
                  MakeArgs make_args) {
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value argv[4];
  int argc = make_args(env, argv);
  if (argc >= 0) CallInScope(env, recv_ref, fn_ref, context, static_cast<size_t>(argc), argv);
  napi_close_handle_scope(env, scope);
}

}  // namespace vhost_rt
