/**
 * What presence counts, for `stats().presence`: a leaf the public types reach without the rest of presence (whose
 * modules reach `ws`'s types, which a host need not install).
 */
export interface PresenceCounters {
  /** presence messages this instance published on the bus, and those the bus refused */
  published: number
  publishErrors: number
  /** presence messages of other instances received, and those that could not be read (dropped) */
  received: number
  unreadable: number
  /** signals written to sockets */
  signals: number
  /** failed reads and writes of the presence store */
  storeErrors: number
}
