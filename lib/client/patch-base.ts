/**
 * The document a `delta` type's subscription holds, and the position it stands at, as the server knows them: the
 * server sends a patch only on the document it sent last (a full frame's, a snapshot's, or one a patch made). A
 * patch whose base is not that document, or that does not apply, is never turned into a document.
 */
import type { NotificationMessage } from '../protocol/messages.js'
import { applyPatch } from '../protocol/patch.js'

export class PatchBase {
  private document: unknown
  /** the position of the document held; undefined: none held (or its position is not known) */
  at: string | undefined

  /** A whole document at `position` (a full frame, a snapshot), or none: the base of the next patch. */
  hold (document: unknown, position: string | undefined): void {
    this.document = document
    this.at = position
  }

  /**
   * The document a patch makes of the one held, now held in its place; undefined when it is the one held already
   * (its full frame came first, on another channel: a feed's); null when the patch does not apply to it.
   */
  apply ({ position, basePosition, patch }: NotificationMessage): { value: unknown } | undefined | null {
    if (position !== undefined && position === this.at) return undefined
    if (basePosition === undefined || basePosition !== this.at || patch === undefined) return null
    try {
      this.hold(applyPatch(this.document, patch), position)
    } catch {
      return null
    }
    return { value: this.document }
  }
}
