/**
 * The pub/sub contract every transport implements (memory, redis, nats), one shared contract test (test/integration/bus/bus.test.ts)
 * for all. Messages are pre-encoded frames: the publisher encodes once, every instance writes the same string to its
 * sockets. What arrives goes to the handlers registered with `onMessage` and `onGap`.
 */
import type { ChannelHistory, Dedupe, HistoryLimits } from './history.js'

export type { HistoryLimits } from './history.js'

/** Called for every message on a channel this instance subscribed to. */
export type BusMessageHandler = (channel: string, message: string) => void
/** Called when messages may have been lost (a connection to the broker dropped and came back). */
export type BusGapHandler = (reason: string) => void

export interface PubSub {
  readonly provider: 'memory' | 'redis' | 'nats'
  /** true while the provider can publish and receive */
  readonly ready: boolean
  /** each channel's recent messages (lib/bus/history.ts); null where the provider keeps none */
  readonly history: ChannelHistory | null
  publish(channel: string, message: string): Promise<void>
  /**
   * Start receiving these channels' messages, in one round trip where the provider allows; idempotent. Resolves
   * once the broker delivers them: a message published after that reaches this instance.
   */
  subscribe(channels: readonly string[]): Promise<void>
  /** Stop receiving these channels' messages; idempotent. */
  unsubscribe(channels: readonly string[]): Promise<void>
  /** Where messages go (one handler; a later call replaces it). */
  onMessage(handler: BusMessageHandler): void
  onGap(handler: BusGapHandler): void
  close(): Promise<void>
}

/** The handlers, and how a transport hands them what it received (nothing before they are registered). */
export abstract class Transport {
  private messageHandler: BusMessageHandler | null = null
  private gapHandler: BusGapHandler | null = null

  onMessage (handler: BusMessageHandler): void {
    this.messageHandler = handler
  }

  onGap (handler: BusGapHandler): void {
    this.gapHandler = handler
  }

  protected deliver (channel: string, message: string): void {
    this.messageHandler?.(channel, message)
  }

  protected gap (reason: string): void {
    this.gapHandler?.(reason)
  }
}

/**
 * Publishes on a channel: through its history when it keeps one (`limits`) and the provider has one, at `position`
 * when the change has one already (lib/bus/history.ts). Resolves with the change's position (undefined: none).
 */
export async function publishOn (bus: PubSub, channel: string, message: string, limits: HistoryLimits | null, position?: string, dedupe?: Dedupe): Promise<string | undefined> {
  if (limits !== null && bus.history !== null) return await bus.history.append(channel, message, limits, position, dedupe)
  await bus.publish(channel, message)
  return position
}

/** How long a broker may take to accept the first connection before the start fails (CHANGEFEED_BUS_UNAVAILABLE). */
export const CONNECT_TIMEOUT_MS = 5000
