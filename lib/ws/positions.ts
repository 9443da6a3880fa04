/**
 * A channel that keeps a history (lib/bus/history.ts) numbers its messages: what its sockets are sent says that
 * position, so that a client resumes from it. The frame of a change is encoded once on the publisher, for every
 * channel; here, once per channel on each instance, it is made to say the channel's position.
 *
 * A `delta` type's patch applies to the document of the change before it: its base is told by that change's own
 * position, which the sockets never saw. The last change of each channel is remembered with the channel position
 * it went out at, so the patch can name its base as the sockets know it (a patch whose base is not the channel's
 * last message is dropped: the change goes out full), and so can a snapshot read at that change.
 */
import type { Envelope } from '../route/envelope.js'
import { atPosition } from '../protocol/index.js'

interface Last {
  /** the change's own position */
  change: string | null
  /** the channel position it went out at */
  at: string
}

export class ChannelPositions {
  /** per watched channel (its local entry: forgotten with it) */
  private readonly last = new WeakMap<object, Last>()

  /** The envelope as the channel's sockets get it: its frames at the channel position. `channel`: its local entry. */
  apply (channel: object, envelope: Envelope): void {
    const { at } = envelope
    if (at === undefined) return
    envelope.frame = atPosition(envelope.frame, at)
    const { delta } = envelope
    const before = this.last.get(channel)
    this.last.set(channel, { change: envelope.position, at })
    if (envelope.payloadType === 'delta') {
      if (delta !== undefined && before !== undefined && before.change === delta.base) {
        envelope.delta = { frame: atPosition(delta.frame, at, before.at), base: before.at }
      } else delete envelope.delta
    }
    envelope.position = at
  }

  /**
   * A snapshot's position (the change that last wrote the row) as the channel's sockets know it: the channel position
   * its last message went out at, when that was this change; else unchanged (not resumable, and no patch base).
   */
  translate (channel: object, position: string): string {
    const last = this.last.get(channel)
    return last !== undefined && last.change === position ? last.at : position
  }
}
