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

/** A change's turns in the router (ChangeOrder.take). */
export interface Turns {
  /** resolves once every change taken before it has been handed on (or given up) */
  ready: Promise<void>
  /**
   * Joins its entity's chain (`enter` does, before its first await) once every change taken before it has joined its
   * own or passed. A change whose type needed a look at the database (a table made a moment ago) must not find a
   * later change of its entity already in the chain: that one waits for its turn, which comes after this change,
   * which would wait for it.
   */
  join: <T>(enter: () => Promise<T>) => Promise<T>
  /** joins no chain (a TRUNCATE, a change of no known type) */
  pass: () => void
  /** handed on, or given up: the next may go */
  done: () => void
}

/** Turns in arrival order for handing on, and for joining an entity's chain. */
export class ChangeOrder {
  private readonly handing = new InOrder()
  private readonly joining = new InOrder()

  take (): Turns {
    const turn = this.handing.take()
    const place = this.joining.take()
    return {
      ready: turn.ready,
      join: async <T>(enter: () => Promise<T>): Promise<T> => {
        await place.ready
        const entered = enter()
        place.done()
        return await entered
      },
      pass: place.done,
      done: () => { place.done(); turn.done() }
    }
  }
}
