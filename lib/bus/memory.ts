/** One process: publish delivers synchronously to this instance's subscribed channels. */
import { Transport, type PubSub } from './bus.js'
import { BusClosedError } from '../errors.js'
import { MemoryHistory } from './history-memory.js'

export class MemoryBus extends Transport implements PubSub {
  readonly provider = 'memory'
  private readonly channels = new Set<string>()
  private closed = false
  readonly history = new MemoryHistory(async (channel, message) => await this.publish(channel, message))

  get ready (): boolean {
    return !this.closed
  }

  async publish (channel: string, message: string): Promise<void> {
    if (this.closed) throw new BusClosedError()
    if (this.channels.has(channel)) this.deliver(channel, message)
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
    this.history.close()
  }
}
