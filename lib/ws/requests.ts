/**
 * A socket's requests: they run one at a time in arrival order, so a quick subscribe then unsubscribe cannot be
 * reordered, and each gets exactly one reply. A handler that failed inside (a database blip, a host `authorize`
 * that threw) answers with its request's failure frame (`internal_error`, retryable).
 */
import type { FastifyBaseLogger } from 'fastify'
import type { RequestIdValue } from '../protocol/index.js'

/** The one reply a request gets (`send` after the first does nothing). */
export interface Reply {
  readonly id: RequestIdValue
  readonly sent: boolean
  send(frame: string): void
  /** answers with the request's failure frame (`internal_error`) */
  fail(): void
}

export class RequestQueue {
  private queue: Promise<void> | undefined

  constructor (private readonly connection: number, private readonly log: FastifyBaseLogger) {}

  /** Runs `task` after the socket's requests before it. */
  inOrder (task: () => Promise<void>): void {
    const next: Promise<void> = (this.queue ?? Promise.resolve()).then(task)
      .catch((err: Error) => this.log.error({ connection: this.connection, err }, 'changefeed: request failed'))
      // an idle socket keeps no settled promise
      .finally(() => { if (this.queue === next) this.queue = undefined })
    this.queue = next
  }

  /** Runs a request in order; `write` sends its reply frame, `failure` is the frame sent when the handler did not answer. */
  request (id: RequestIdValue, write: (frame: string) => void, failure: () => string, task: (reply: Reply) => Promise<void>): void {
    const reply = replyTo(id, write, failure)
    this.inOrder(async () => {
      try {
        await task(reply)
      } finally {
        if (!reply.sent) reply.fail()
      }
    })
  }
}

function replyTo (id: RequestIdValue, write: (frame: string) => void, failure: () => string): Reply {
  let sent = false
  const reply: Reply = {
    id,
    get sent () { return sent },
    send: (frame) => {
      if (sent) return
      sent = true
      write(frame)
    },
    fail: () => reply.send(failure())
  }
  return reply
}
