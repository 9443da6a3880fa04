/**
 * The time source of the sign-in limits and the JWKS key set. The real one is the process clock; tests pass a fake
 * one (clock-mock's `Clock` fits) to step through minutes of windows, cooldowns and refreshes at once.
 */
export interface Timer { unref (): unknown }

export interface Clock {
  now (): number
  setTimeout (fn: () => void, ms: number): Timer
  clearTimeout (timer: Timer): void
  setInterval (fn: () => void, ms: number): Timer
  clearInterval (timer: Timer): void
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (timer) => clearTimeout(timer as NodeJS.Timeout),
  setInterval: (fn, ms) => setInterval(fn, ms),
  clearInterval: (timer) => clearInterval(timer as NodeJS.Timeout)
}
