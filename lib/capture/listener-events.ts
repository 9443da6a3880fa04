/** What a database's listener (lib/capture/listener.ts) is told, and what it tells. */
import type { Change } from './coalesce.js'
import type { DdlNote } from './payloads.js'
import type { OutboxBatchHandler, OutboxSettings } from './publisher.js'
import type { HandoffRecord, StandbySettings } from './standby.js'

export type ListenerState = 'idle' | 'following' | 'listening' | 'reconnecting' | 'closed'

export interface ListenerEvents {
  /** a change to hand on; what it returns settles once it is routed (the leader then records its transaction) */
  onChange(change: Change): unknown
  /**
   * Changes of `database` may have been lost: its watchers must resync. `precaution`: this instance has just become
   * the first listener with a shared bus; it lost nothing itself, but the watchers of other instances may have (a
   * leader that died just before), so they are told too; it is not a gap of this instance.
   */
  onGap(database: string, reason: 'listener_gap' | 'leader_change' | 'unannounced', gap: { precaution: boolean }): void
  /** Outbox mode: routes a batch of numbered rows (lib/capture/publisher.ts). */
  onOutbox: OutboxBatchHandler
  /** The database's event trigger put the capture trigger on a new table, or could not (`error`). */
  onDdl(database: string, note: DdlNote): void
  /** A trigger said, unsigned, that its writing role may not announce changes: the database's grants need a look. */
  onUnannounced(database: string): void
}

export type { OutboxSettings } from './publisher.js'

export interface ListenerOptions {
  channel: string
  reconnectMaxDelayMs: number
  /** true with a shared bus: only the holder of the advisory lock listens */
  leaderElection: boolean
  leaderRetryMs: number
  /** how often the connection is checked with a query (0: never); a connection that does not answer is replaced */
  probeIntervalMs: number
  /** outbox mode, or null for notify mode */
  outbox: OutboxSettings | null
  /** notify mode with leader election: followers listen on standby, the leader records what it handed on */
  standby: (StandbySettings & { record: HandoffRecord }) | null
}
