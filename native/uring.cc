// io_uring (liburing): filled in by the io_uring engine's work.
#include "modules.h"

namespace vhost_rt {

void InitUring(Napi::Env env, Napi::Object exports) {}

}  // namespace vhost_rt
