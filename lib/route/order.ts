/**
 * Captured changes leave the router in the order they came (commit order), across entities too, while the work of
 * each (interest checks, document reads) runs at once: each takes a turn on arrival and hands on once the one before
 * it has.
 */

/** Turns in the order they were taken: each one's `ready` resolves once the one before it is `done`. */
export class InOrder {
  private tail: Promise<void> = Promise.resolve()

  take (): { ready: Promise<void>, done: () => void } {
    const ready = this.tail
    let done!: () => void
    this.tail = new Promise<void>((resolve) => { done = resolve })
    return { ready, done }
  }
}
