// Network syscalls (TAP devices): filled in by the virtio-net work.
#include "modules.h"

namespace vhost_rt {

void InitNet(Napi::Env env, Napi::Object exports) {}

}  // namespace vhost_rt
