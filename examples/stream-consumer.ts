/**
 * A service reading the change stream (lib/route/stream.ts) with a durable pull consumer: the server remembers what the
 * consumer acked, so a restarted service goes on where it stopped. Each change is acked only after it was
 * processed: a crash mid-change means that change comes again (at least once), so processing must be idempotent,
 * e.g. by skipping positions already applied.
 *
 *   npm run build
 *   NATS_URL=nats://127.0.0.1:4222 STREAM=CHANGEFEED CONSUMER=example-consumer FILTER='changefeed.Fixture.>' \
 *     node dist/examples/stream-consumer.js
 */
import { pathToFileURL } from 'node:url'
import { AckPolicy, DeliverPolicy, connect, nanos, type JsMsg } from 'nats'

export interface Change {
  entityType: string
  entityId: string
  changeType: string
  position: string
  subject: string
  /** the notification's `data`, as browsers receive it */
  data: Record<string, unknown>
}

export interface ConsumeOptions {
  /** default `nats://127.0.0.1:4222` */
  url?: string
  /** default `CHANGEFEED` */
  stream?: string
  /** the durable consumer's name; default `example-consumer` */
  durable?: string
  /** only these subjects, e.g. `changefeed.Fixture.>`; default all. A new filter wants a new durable name: the old
   * consumer would go on from where it was, skipping what the old filter left out */
  filterSubject?: string
  /** a change not acked within this time is delivered again; default 30 */
  ackWaitSeconds?: number
  /** processes one change; the change is acked when it resolves */
  handle: (change: Change) => void | Promise<void>
}

export interface StreamConsumer {
  /** Finishes the changes already received, acks them, and disconnects. */
  stop: () => Promise<void>
  /** settles when consuming ends: resolves after stop(), rejects when a change could not be processed */
  done: Promise<void>
}

function toChange (msg: JsMsg): Change {
  const data = (JSON.parse(msg.string()) as { data: Record<string, unknown> }).data
  return {
    entityType: String(data.entityType),
    entityId: String(data.entityId),
    changeType: String(data.changeType),
    // the stream's message ID is the position, whether or not the frame carries one
    position: String(data.position ?? msg.headers?.get('Nats-Msg-Id')),
    subject: msg.subject,
    data
  }
}

export async function consume (options: ConsumeOptions): Promise<StreamConsumer> {
  const stream = options.stream ?? 'CHANGEFEED'
  const durable = options.durable ?? 'example-consumer'
  const nc = await connect({ servers: options.url ?? 'nats://127.0.0.1:4222', name: durable })
  // adding a durable consumer that exists with the same configuration changes nothing: every start runs this
  const jsm = await nc.jetstreamManager()
  await jsm.consumers.add(stream, {
    durable_name: durable,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    ack_wait: nanos((options.ackWaitSeconds ?? 30) * 1000),
    ...(options.filterSubject !== undefined && { filter_subject: options.filterSubject })
  })
  const messages = await (await nc.jetstream().consumers.get(stream, durable)).consume({ max_messages: 100 })

  const done = (async () => {
    try {
      for await (const msg of messages) {
        let change: Change
        try {
          change = toChange(msg)
        } catch {
          // not a notification: it would fail every time, so never deliver it again
          msg.term()
          continue
        }
        try {
          await options.handle(change)
        } catch (err) {
          // going on would break the order: stop here; this change comes first at the next start
          msg.nak()
          throw err
        }
        msg.ack()
      }
    } finally {
      // drain sends the acks still buffered before disconnecting
      if (!nc.isClosed()) await nc.drain()
    }
  })()
  done.catch(() => {})

  return {
    done,
    async stop () {
      // stop() ends the iteration after the messages already received, so they are processed and acked too
      messages.stop()
      await done.catch(() => {})
    }
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const consumer = await consume({
    url: process.env.NATS_URL,
    stream: process.env.STREAM,
    durable: process.env.CONSUMER,
    filterSubject: process.env.FILTER,
    handle: (c) => { console.log(c.entityType, c.entityId, c.changeType, c.position) }
  })
  const stop = (): void => { void consumer.stop() }
  process.once('SIGINT', stop)
  process.once('SIGTERM', stop)
  await consumer.done.then(() => process.exit(0), (err: unknown) => { console.error(err); process.exit(1) })
}
