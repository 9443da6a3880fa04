/**
 * Presence entries in a JetStream key-value bucket (`<prefix>_presence`), beside the NATS bus on its connection.
 * A key per instance and user of an entity, its parts base64url-encoded: `<channel>.<instance>.<userId>` → the
 * entry (JSON). The entries of an instance that stopped are removed by an instance that notices
 * (lib/presence/presence.ts); the registry of live instances is the interest store's (lib/interest/nats.ts).
 */
import type { KV, NatsConnection } from 'nats'
import type { Entry } from './room.js'
import type { PresenceStore, StoredEntry } from './store.js'

const part = (s: string): string => Buffer.from(s).toString('base64url')
const unpart = (s: string): string => Buffer.from(s, 'base64url').toString()
const encoder = new TextEncoder()

export class NatsPresenceStore implements PresenceStore {
  private kv: Promise<KV>

  constructor (nc: NatsConnection, prefix: string, private readonly instanceId: string, readonly live: () => Promise<Set<string>>) {
    this.kv = nc.jetstream().views.kv(`${prefix.replace(/[^A-Za-z0-9_-]/g, '_')}_presence`, { history: 1 })
    // a failure is each call's to report
    this.kv.catch(() => {})
  }

  private keyOf (channel: string, instance: string, userId: string): string {
    return `${part(channel)}.${instance}.${part(userId)}`
  }

  async write (channel: string, userId: string, entry: Entry | null): Promise<void> {
    const kv = await this.kv
    const key = this.keyOf(channel, this.instanceId, userId)
    if (entry === null) await kv.delete(key)
    else await kv.put(key, encoder.encode(JSON.stringify(entry)))
  }

  async load (channel: string): Promise<StoredEntry[]> {
    const kv = await this.kv
    const keys: string[] = []
    for await (const key of await kv.keys(part(channel) + '.>')) keys.push(key)
    const entries = await Promise.all(keys.map(async (key) => {
      const found = await kv.get(key)
      if (found === null || found.operation !== 'PUT') return null
      const [, instance, user] = key.split('.')
      return { instance, userId: unpart(user), entry: found.json<Entry>() }
    }))
    return entries.filter((entry) => entry !== null)
  }

  async forget (channel: string, instance: string, userIds: readonly string[]): Promise<void> {
    const kv = await this.kv
    await Promise.all(userIds.map(async (userId) => await kv.delete(this.keyOf(channel, instance, userId))))
  }

  /** Nothing expires by itself here: an instance that stopped is told by the interest store's heartbeats. */
  async refresh (): Promise<void> {}
}
