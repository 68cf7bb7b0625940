{
  'targets': [
    {
      'target_name': 'vhost_rt',
      'sources': [
        'addon.cc',
        'errors.cc',
        'args.cc',
        'sockets.cc',
        'memory.cc',
        'watcher.cc',
        'buffers.cc',
        'aio.cc',
        'fileio.cc',
        'rt.cc',
        'uring.cc',
        'net.cc',
        'sigbus.cc',
        'nbd.cc',
      ],
      'include_dirs': ["<!(node -p \"require('node-addon-api').include_dir\")"],
      'defines': [
        'NAPI_VERSION=8',
        'NAPI_CPP_EXCEPTIONS',
        'NODE_ADDON_API_DISABLE_DEPRECATED',
        '_GNU_SOURCE',
      ],
      'cflags!': ['-fno-exceptions'],
      'cflags_cc!': ['-fno-exceptions', '-fno-rtti'],
      'cflags_cc': ['-std=gnu++17', '-Wall', '-Wextra', '-Wno-unused-parameter'],
      'libraries': ['-luring', '-lnbd'],
    },
  ],
}
