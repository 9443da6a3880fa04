/**
 * The pub/sub interface every provider implements (memory, redis, nats). Messages are pre-encoded frames: the
 * publisher encodes once, every instance writes the same string to its sockets.
 */

/** Called for every message on a channel this instance subscribed to. */
export type BusMessageHandler = (channel: string, message: string) => void

export interface PubSub {
  readonly provider: 'memory' | 'redis' | 'nats'
  /** true while the provider can publish and receive */
  readonly ready: boolean
  publish(channel: string, message: string): Promise<void>
  /**
   * Start receiving these channels' messages, in one round trip where the provider allows; idempotent. Resolves
   * once the broker delivers them: a message published after that reaches this instance.
   */
  subscribe(channels: readonly string[]): Promise<void>
  /** Stop receiving these channels' messages; idempotent. */
  unsubscribe(channels: readonly string[]): Promise<void>
  close(): Promise<void>
}

/** What a provider is built with. `onGap` reports a time during which messages may have been lost. */
export interface BusContext {
  onMessage: BusMessageHandler
  onGap(reason: string): void
}

/** How long a broker may take to accept the first connection before the start fails (CHANGEFEED_BUS_UNAVAILABLE). */
export const CONNECT_TIMEOUT_MS = 5000
