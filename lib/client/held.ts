/**
 * What an entity's subscription (subscription.ts) and a live query's filter (query.ts) share: one server
 * subscription held by the handles the client gave out, and the state those handles read.
 *
 * - Holds are counted. The last release unsubscribes on the next tick, so that a release followed at once by a new
 *   hold (React StrictMode's unmount and mount) sends nothing.
 * - A refusal that is the server's moment rather than the request's fault (rate, a failure) is sent again after a
 *   short random delay. A lost connection drops the retry: the reopen sends every subscription again.
 * - The state is replaced, never mutated, on each change, and each change is told to its watchers.
 */
import { retryDelay } from './backoff.js'
import type { ClientMessage } from './frames.js'

/** Where it stands with the server (`resuming`, a subscribe with `since` on its way, is an entity's only). */
export type Phase = 'unsubscribed' | 'subscribing' | 'resuming' | 'subscribed' | 'error' | 'released'

/** What it needs of its client. */
export interface HeldHost {
  /** sends a frame; false when the socket is not open (every subscription is sent again when it opens) */
  send (message: ClientMessage): boolean
  /** [0, 1), for the jitter of a retry */
  random (): number
  /** the last holder left and the unsubscribe is sent: forget it */
  released (held: { readonly key: string }): void
}

export abstract class Held<S extends { revision: number }> {
  phase: Phase = 'unsubscribed'
  /** called after every change of the state */
  readonly watchers = new Set<(state: S) => void>()
  private holders = 0
  private releaseTimer: ReturnType<typeof setTimeout> | undefined
  private retryTimer: ReturnType<typeof setTimeout> | undefined

  /** `key`: the server's subscriptionId, and the request id of every subscribe; `snapshot`: the state to start from */
  constructor (readonly key: string, public snapshot: S, protected readonly host: HeldHost) {}

  /** Sends the subscribe. */
  abstract subscribe (): void

  /** Someone holds it (again): a pending release is called off. */
  hold (): void {
    this.holders++
    clearTimeout(this.releaseTimer)
    this.releaseTimer = undefined
  }

  /** A holder left. The last one's leaving unsubscribes on the next tick, unless someone holds it again meanwhile. */
  release (): void {
    if (--this.holders > 0 || this.releaseTimer !== undefined || this.phase === 'released') return
    this.releaseTimer = setTimeout(() => {
      this.releaseTimer = undefined
      this.close()
      this.host.released(this)
      this.host.send({ type: 'unsubscribe', data: { subscriptionId: this.key } })
    }, 0)
  }

  /** Stops every timer: it is dead (the client was destroyed, or it was released). */
  close (): void {
    this.phase = 'released'
    clearTimeout(this.releaseTimer)
    clearTimeout(this.retryTimer)
  }

  /** The socket closed: the server holds nothing of it any more (a pending retry would be sent on no socket). */
  onClose (): void {
    if (this.phase === 'released') return
    clearTimeout(this.retryTimer)
    this.phase = 'unsubscribed'
  }

  /** The server holds nothing of it: send it again after a short random delay. */
  protected retry (): void {
    this.phase = 'unsubscribed'
    clearTimeout(this.retryTimer)
    this.retryTimer = setTimeout(() => this.subscribe(), retryDelay(this.host.random()))
  }

  /** A new state, made of the one before and `change`; `bump`: a change handles count (`revision`). */
  protected update (change: Partial<S>, bump = true): void {
    this.snapshot = { ...this.snapshot, ...change, revision: this.snapshot.revision + (bump ? 1 : 0) }
    for (const watcher of this.watchers) watcher(this.snapshot)
  }
}
