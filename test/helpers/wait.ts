/** Waiting in tests: for a condition (bounded), or for a while. */
export const sleep = async (ms: number): Promise<void> => await new Promise((resolve) => setTimeout(resolve, ms))

/** Polls `check` until it holds (true) or `ms` pass (false). `pause` runs between polls (React tests pass act()). */
export async function until (check: () => boolean | Promise<boolean>, ms = 5000, pause: () => Promise<void> = async () => await sleep(20)): Promise<boolean> {
  const deadline = Date.now() + ms
  while (!await check()) {
    if (Date.now() > deadline) return false
    await pause()
  }
  return true
}
