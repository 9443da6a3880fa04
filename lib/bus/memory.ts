/** One process: publish delivers synchronously to this instance's subscribed channels. */
import type { BusContext, PubSub } from './bus.js'
import { BusClosedError } from '../errors.js'

export class MemoryBus implements PubSub {
  readonly provider = 'memory'
  private readonly channels = new Set<string>()
  private closed = false

  constructor (private readonly context: BusContext) {}

  get ready (): boolean {
    return !this.closed
  }

  async publish (channel: string, message: string): Promise<void> {
    if (this.closed) throw new BusClosedError()
    if (this.channels.has(channel)) this.context.onMessage(channel, message)
  }

  async subscribe (channels: readonly string[]): Promise<void> {
    for (const channel of channels) this.channels.add(channel)
  }

  async unsubscribe (channels: readonly string[]): Promise<void> {
    for (const channel of channels) this.channels.delete(channel)
  }

  async close (): Promise<void> {
    this.closed = true
    this.channels.clear()
  }
}
