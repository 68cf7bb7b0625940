/**
 * Real-time knobs: options and their validation, the guest-to-host priority
 * mapping, and applying them to the calling thread. Importing this module
 * loads the native addon (through apply.ts); code that only validates
 * options can import './options.js' and './priority.js' directly.
 */
export {
  applyRtOptions,
  BACKGROUND_NICE,
  type BackgroundMode,
  describeThread,
  guestMemoryLockRequested,
  isMemoryLocked,
  lockGuestMemory,
  lockMemory,
  lowerToBackground,
  policyName,
  policyNumber,
  probeIoprio,
  type ThreadRtState,
  unlockMemory,
} from './apply.js';
export {
  cpuCount,
  isRealTimePolicy,
  parseCpuList,
  RT_FLAGS,
  RT_POLICIES,
  RT_PRIORITY_MAX,
  type RtOptions,
  type RtPolicy,
  validateRtOptions,
} from './options.js';
export { GUEST_PRIORITY_MAX, mapGuestPriority, scalePriority } from './priority.js';
