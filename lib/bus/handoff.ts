/**
 * Where a database's leader records the last transaction it handed on (lib/capture/standby.ts), so that the instance
 * taking over knows what is left to publish. One small value per database, overwritten with every write, dropped a
 * day after the last: in Redis a key (`<prefix>:handoff:<database>`, SET with PX), in NATS a JetStream subject of a
 * memory stream keeping one message per subject (`<prefix>_HANDOFF`, read with a direct get). A record that is gone
 * (expired, flushed, a broker restarted) reads as none: the takeover is then a gap, as without a standby. The memory
 * bus has no record: one process, no takeover.
 */
import { NatsError, RetentionPolicy, StorageType, nanos, type NatsConnection } from 'nats'
import type { Broker } from './index.js'
import { subjectOf } from './subjects.js'
import type { HandoffRecord } from './handoff-record.js'

export type { HandoffRecord } from './handoff-record.js'

const TTL_MS = 24 * 3600 * 1000
const encoder = new TextEncoder()
const decoder = new TextDecoder()

/** The record on the bus's broker; null for the memory bus. */
export function handoffRecordOf (broker: Broker, prefix: string): HandoffRecord | null {
  switch (broker.provider) {
    case 'memory': return null
    case 'redis': {
      const client = broker.publisher
      const key = (database: string): string => `${prefix}:handoff:${database}`
      return {
        write: async (database, txid) => { await client.set(key(database), txid, 'PX', TTL_MS) },
        read: async (database) => await client.get(key(database))
      }
    }
    case 'nats': return natsRecord(broker.nc, prefix)
  }
}

function natsRecord (nc: NatsConnection, prefix: string): HandoffRecord {
  const name = prefix.replace(/[^A-Za-z0-9_-]/g, '_') + '_HANDOFF'
  const subjects = subjectOf(prefix + ':handoff')
  const subject = (database: string): string => `${subjects}.${subjectOf(database)}`
  let stream: Promise<void> | null = null
  const ready = async (): Promise<void> => {
    stream ??= nc.jetstreamManager().then(async (jsm) => {
      const config = { name, subjects: [subjects + '.>'], storage: StorageType.Memory, retention: RetentionPolicy.Limits, max_msgs_per_subject: 1, max_age: nanos(TTL_MS), allow_direct: true }
      await jsm.streams.add(config).catch(async (err: unknown) => { if (!(err instanceof NatsError)) throw err })
    })
    // a failure is tried again by the next use
    await stream.catch((err: unknown) => { stream = null; throw err })
  }
  const js = nc.jetstream()
  return {
    write: async (database, txid) => {
      await ready()
      try {
        await js.publish(subject(database), encoder.encode(txid))
      } catch {
        // the stream may be gone (the server restarted and its memory lost): made again
        stream = null
        await ready()
        await js.publish(subject(database), encoder.encode(txid))
      }
    },
    read: async (database) => {
      await ready()
      const jsm = await nc.jetstreamManager()
      const direct = (jsm as unknown as { direct: { getMessage(stream: string, query: { last_by_subj: string }): Promise<{ data: Uint8Array }> } }).direct
      const stored = await direct.getMessage(name, { last_by_subj: subject(database) }).catch((err: unknown) => {
        if (err instanceof NatsError && err.code === '404') return null
        throw err
      })
      return stored === null ? null : decoder.decode(stored.data)
    }
  }
}
