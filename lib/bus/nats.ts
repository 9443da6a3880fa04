/**
 * NATS core pub/sub for the channels (the cluster interest store, in JetStream key-value, is lib/interest/nats.ts,
 * so a deployment needs no Redis). Channel names become subjects with the characters NATS reserves ('.', '*', '>',
 * whitespace) escaped.
 */
import type { FastifyBaseLogger } from 'fastify'
import { connect, type NatsConnection, type Subscription } from 'nats'
import { CONNECT_TIMEOUT_MS, Transport, type PubSub } from './bus.js'
import { BusUnavailableError } from '../errors.js'
import { redactCredentials } from '../auth/redact.js'
import { subjectOf } from './subjects.js'
import { NatsHistory } from './history-nats.js'

const encoder = new TextEncoder()
const decoder = new TextDecoder()

export { subjectOf }

/** Connects, or throws CHANGEFEED_BUS_UNAVAILABLE within `timeoutMs` when no server answers. */
export async function connectNats (url: string, log: FastifyBaseLogger, timeoutMs = CONNECT_TIMEOUT_MS): Promise<NatsConnection> {
  let nc: NatsConnection
  try {
    nc = await connect({ servers: url, name: 'fastify-changefeed', reconnect: true, maxReconnectAttempts: -1, reconnectTimeWait: 250, timeout: timeoutMs })
  } catch (err) {
    // nats.js errors say only their code (CONNECTION_REFUSED, TIMEOUT): the URL is what the operator needs
    throw new BusUnavailableError('NATS', redactCredentials(url), (err as Error).message)
  }
  log.info({ server: nc.getServer() }, 'changefeed: connected to NATS')
  return nc
}

export class NatsBus extends Transport implements PubSub {
  readonly provider = 'nats'
  readonly history: NatsHistory
  private readonly subscriptions = new Map<string, Subscription>()
  private connected = true
  private closed = false

  constructor (private readonly nc: NatsConnection, private readonly log: FastifyBaseLogger, prefix = 'changefeed') {
    super()
    this.history = new NatsHistory(nc, prefix, async (channel, message) => await this.publish(channel, message))
    void this.watchStatus()
  }

  private async watchStatus (): Promise<void> {
    for await (const status of this.nc.status()) {
      if (status.type === 'disconnect') {
        this.connected = false
        this.log.warn('changefeed: NATS connection lost')
      } else if (status.type === 'reconnect') {
        // subscriptions are restored by the client; what was published meanwhile is lost: say so
        this.connected = true
        this.log.info('changefeed: NATS connection restored')
        this.gap('bus_gap')
      }
    }
  }

  get ready (): boolean {
    return !this.closed && this.connected && !this.nc.isClosed()
  }

  async publish (channel: string, message: string): Promise<void> {
    this.nc.publish(subjectOf(channel), encoder.encode(message))
  }

  async subscribe (channels: readonly string[]): Promise<void> {
    for (const channel of channels) {
      if (this.subscriptions.has(channel)) continue
      this.subscriptions.set(channel, this.nc.subscribe(subjectOf(channel), {
        callback: (err, msg) => { if (err === null && !this.closed) this.deliver(channel, decoder.decode(msg.data)) }
      }))
    }
    // SUB is sent asynchronously; the round trip makes "subscribed" mean the server delivers from now on
    await this.nc.flush()
  }

  async unsubscribe (channels: readonly string[]): Promise<void> {
    for (const channel of channels) {
      this.subscriptions.get(channel)?.unsubscribe()
      this.subscriptions.delete(channel)
    }
  }

  async close (): Promise<void> {
    this.closed = true
    for (const s of this.subscriptions.values()) s.unsubscribe()
    this.subscriptions.clear()
  }
}
