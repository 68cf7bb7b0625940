/**
 * The protocol feature bits against the vhost-user specification's own table.
 */
import { describe, expect, it } from 'vitest';
import { ProtocolFeature } from '../../src/vhost-user/protocol.js';

/**
 * The table of docs/interop/vhost-user.rst in qemu/qemu, section "Protocol
 * features", as the spec writes it (its `#define` names and numbers). Bits 5
 * and 10 were SLAVE_REQ and SLAVE_SEND_FD before the spec renamed them.
 */
const SPEC_PROTOCOL_FEATURES = {
  VHOST_USER_PROTOCOL_F_MQ: 0,
  VHOST_USER_PROTOCOL_F_LOG_SHMFD: 1,
  VHOST_USER_PROTOCOL_F_RARP: 2,
  VHOST_USER_PROTOCOL_F_REPLY_ACK: 3,
  VHOST_USER_PROTOCOL_F_MTU: 4,
  VHOST_USER_PROTOCOL_F_BACKEND_REQ: 5,
  VHOST_USER_PROTOCOL_F_CROSS_ENDIAN: 6,
  VHOST_USER_PROTOCOL_F_CRYPTO_SESSION: 7,
  VHOST_USER_PROTOCOL_F_PAGEFAULT: 8,
  VHOST_USER_PROTOCOL_F_CONFIG: 9,
  VHOST_USER_PROTOCOL_F_BACKEND_SEND_FD: 10,
  VHOST_USER_PROTOCOL_F_HOST_NOTIFIER: 11,
  VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD: 12,
  VHOST_USER_PROTOCOL_F_RESET_DEVICE: 13,
  VHOST_USER_PROTOCOL_F_INBAND_NOTIFICATIONS: 14,
  VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS: 15,
  VHOST_USER_PROTOCOL_F_STATUS: 16,
  VHOST_USER_PROTOCOL_F_XEN_MMAP: 17,
  VHOST_USER_PROTOCOL_F_SHARED_OBJECT: 18,
  VHOST_USER_PROTOCOL_F_DEVICE_STATE: 19,
};

describe('ProtocolFeature', () => {
  it('names and numbers every bit exactly as the spec\'s "Protocol features" table', () => {
    const spec = Object.fromEntries(
      Object.entries(SPEC_PROTOCOL_FEATURES).map(([name, bit]) => [
        name.slice('VHOST_USER_PROTOCOL_F_'.length),
        bit,
      ]),
    );
    expect({ ...ProtocolFeature }).toEqual(spec);
  });
});
