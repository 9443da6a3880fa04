/**
 * The change stream: every change, for every entity, appended to a NATS JetStream stream, so services consume it
 * at least once through durable consumers, independently of any browser's subscriptions. The bus is fire-and-forget
 * (a socket that missed a change resyncs); this stream is not: a publish counts only once JetStream has acked it.
 *
 *   <subjectPrefix>.<entityType>.<entityId>   body: the notification frame, unchanged   Nats-Msg-Id: the position
 */
import type { FastifyBaseLogger } from 'fastify'
import { NatsError, RetentionPolicy, StorageType, nanos, type JetStreamClient, type NatsConnection, type StreamConfig } from 'nats'
import { connectNats, subjectOf as tokenOf } from '../bus/nats.js'

/** Where every change goes besides the watchers (here: a JetStream stream). Rejects when not accepted. */
export interface ChangeSink {
  publish(record: { entityType: string, entityId: string, position: string, frame: string }): Promise<void>
  /** false during an outage */
  readonly ready: boolean
}

/** Where the stream lives and how much of it JetStream keeps. */
export interface StreamOptions {
  /** NATS server, e.g. `nats://127.0.0.1:4222` */
  url: string
  /** stream name, e.g. `CHANGEFEED` */
  name: string
  /** first subject token, e.g. `changefeed`; the stream takes `<subjectPrefix>.>` */
  subjectPrefix: string
  /** changes older than this are dropped */
  maxAgeSeconds: number
  /** the oldest changes are dropped beyond this size */
  maxBytes: number
  /** a position published again within this window is dropped as a duplicate */
  duplicateWindowSeconds: number
}

/** One change as the stream stores it. */
export interface StreamRecord {
  entityType: string
  entityId: string
  /** the change's position: the message ID, so a change published twice is stored once */
  position: string
  /** the notification JSON, published as the message body */
  frame: string
}

/** JetStream's "stream name already in use with a different configuration" */
const STREAM_EXISTS_DIFFERENTLY = 10058
const encoder = new TextEncoder()

export class ChangeStream {
  private publishedCount = 0
  private failedCount = 0
  /** publishes waiting for their ack: close() lets them finish */
  private readonly inFlight = new Set<Promise<unknown>>()
  private closing: Promise<void> | null = null
  private connected = true

  private constructor (
    private readonly nc: NatsConnection,
    private readonly js: JetStreamClient,
    private readonly options: StreamOptions,
    private readonly log: FastifyBaseLogger
  ) {
    void (async () => {
      for await (const status of nc.status()) {
        if (status.type === 'disconnect') this.connected = false
        else if (status.type === 'reconnect') this.connected = true
      }
    })()
  }

  /** false while the NATS connection is down: a failure then is an outage, not a change JetStream refuses */
  get ready (): boolean {
    return this.connected && !this.nc.isClosed()
  }

  /** Connects and creates the stream, or brings an existing one to these limits. */
  static async open (options: StreamOptions, log: FastifyBaseLogger): Promise<ChangeStream> {
    const nc = await connectNats(options.url, log)
    try {
      const jsm = await nc.jetstreamManager()
      const config: Partial<StreamConfig> = {
        name: options.name,
        subjects: [`${options.subjectPrefix}.>`],
        storage: StorageType.File,
        retention: RetentionPolicy.Limits,
        max_age: nanos(options.maxAgeSeconds * 1000),
        max_bytes: options.maxBytes,
        duplicate_window: nanos(options.duplicateWindowSeconds * 1000)
      }
      try {
        await jsm.streams.add(config)
      } catch (err) {
        // add is idempotent for the same config; a stream left by an older deployment gets the new limits
        if (!(err instanceof NatsError) || err.api_error?.err_code !== STREAM_EXISTS_DIFFERENTLY) throw err
        const { name, storage, retention, ...changeable } = config
        await jsm.streams.update(options.name, changeable)
        log.info({ stream: options.name }, 'changefeed: updated the configuration of the change stream')
      }
      return new ChangeStream(nc, nc.jetstream(), options, log)
    } catch (err) {
      await nc.close()
      throw err
    }
  }

  get published (): number { return this.publishedCount }
  get failed (): number { return this.failedCount }

  subjectOf (entityType: string, entityId: string): string {
    // the type is escaped too: harmless for an identifier, and a '.' in it could not split the subject
    return `${this.options.subjectPrefix}.${tokenOf(entityType)}.${tokenOf(entityId)}`
  }

  /**
   * Publishes and waits for JetStream's ack; msgID = position so a republished change (after a failover) is
   * dropped by the duplicate window. Rejects when not acked.
   */
  async publish (record: StreamRecord): Promise<void> {
    const acked = this.js.publish(this.subjectOf(record.entityType, record.entityId), encoder.encode(record.frame), { msgID: record.position })
    this.inFlight.add(acked)
    try {
      const ack = await acked
      this.publishedCount++
      if (ack.duplicate) this.log.debug({ position: record.position }, 'changefeed: change already in the stream')
    } catch (err) {
      this.failedCount++
      this.log.warn({ err, stream: this.options.name, position: record.position }, 'changefeed: the change stream did not ack a change')
      throw err
    } finally {
      this.inFlight.delete(acked)
    }
  }

  /** Waits for publishes under way, then disconnects; safe to call twice. */
  async close (): Promise<void> {
    this.closing ??= (async () => {
      // draining first would close the reply inbox and fail the acks still on their way
      await Promise.allSettled([...this.inFlight])
      if (!this.nc.isClosed()) await this.nc.drain()
    })()
    await this.closing
  }
}
