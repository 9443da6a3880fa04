/**
 * Where an instance's presence entries live for the others to read: nowhere with the memory bus (one process), Redis
 * hashes or a NATS key-value bucket in a cluster. Changes travel on the bus (lib/presence/presence.ts); the store is
 * what an instance reads when it starts watching an entity, and what outlives a message it missed. Entries of an
 * instance that stopped are told by the cluster's instance registry (lib/interest/), and removed by whoever notices.
 */
import type { Entry } from './room.js'

export interface StoredEntry { instance: string, userId: string, entry: Entry }

export interface PresenceStore {
  /** Writes this instance's entry for a user on a channel (null: removes it). */
  write(channel: string, userId: string, entry: Entry | null): Promise<void>
  /** Every instance's entries of a channel. */
  load(channel: string): Promise<StoredEntry[]>
  /** Removes a stopped instance's entries of a channel. */
  forget(channel: string, instance: string, userIds: readonly string[]): Promise<void>
  /** Renews the expiry of the channels this instance has entries on. */
  refresh(channels: readonly string[]): Promise<void>
  /** The instances alive now (their heartbeat has not lapsed); null with the memory bus. */
  live(): Promise<Set<string>> | null
}

/** One process: nothing to share. */
export class LocalPresenceStore implements PresenceStore {
  async write (): Promise<void> {}
  async load (): Promise<StoredEntry[]> { return [] }
  async forget (): Promise<void> {}
  async refresh (): Promise<void> {}
  live (): null { return null }
}
