/**
 * A channel that keeps a history (lib/bus/history.ts) numbers its messages: what its sockets are sent says that
 * position, so that a client resumes from it. The frame of a change is encoded once on the publisher, for every
 * channel; here, once per channel on each instance, it is made to say the channel's position.
 *
 * A `delta` type's patch applies to the document of the change before it: its base is told by that change's own
 * position, which the sockets never saw. The channel's last few changes are remembered with the channel position
 * each went out at, so the patch can name its base as the sockets know it (a patch whose base this instance did not
 * pass on goes out full), and so can a snapshot read at that change. A few, not one: an event stream's appends go
 * out on the aggregate's channel between two of its document's changes.
 */
import type { Envelope } from '../route/envelope.js'
import { atPosition } from '../protocol/index.js'

/** changes remembered per channel */
const REMEMBERED = 8

interface Sent {
  /** the change's own position */
  change: string | null
  /** the channel position it went out at */
  at: string
}

export class ChannelPositions {
  /** per watched channel (its local entry: forgotten with it), newest last */
  private readonly sent = new WeakMap<object, Sent[]>()

  /**
   * The envelope as the channel's sockets get it: its frames at the channel position. `channel`: its local entry.
   * False for a message at a position that went out a moment ago: a new leader's publish of what the old one may have
   * published (lib/bus/history-nats.ts), not to be delivered twice.
   */
  apply (channel: object, envelope: Envelope): boolean {
    const { at } = envelope
    if (at === undefined) return true
    let sent = this.sent.get(channel)
    if (sent === undefined) this.sent.set(channel, sent = [])
    if (sent.some((s) => s.at === at)) return false
    envelope.frame = atPosition(envelope.frame, at)
    const { delta } = envelope
    const base = delta === undefined ? undefined : sent.find((s) => s.change === delta.base)
    sent.push({ change: envelope.position, at })
    if (sent.length > REMEMBERED) sent.shift()
    if (envelope.payloadType === 'delta') {
      if (delta !== undefined && base !== undefined) {
        envelope.delta = { frame: atPosition(delta.frame, at, base.at), base: base.at }
      } else delete envelope.delta
    }
    envelope.position = at
    return true
  }

  /**
   * A snapshot's position (the change that last wrote the row) as the channel's sockets know it: the channel position
   * that change went out at, when it is one of the last few; else unchanged (not resumable, and no patch base).
   */
  translate (channel: object, position: string): string {
    return this.sent.get(channel)?.find((s) => s.change === position)?.at ?? position
  }
}
