/**
 * What the package knows of itself: where it is installed (its SQL, its own package.json), its version, and its
 * optional peer dependencies. What only the standalone server or the demo needs (the OpenTelemetry SDK and
 * exporters, PGlite) is not installed with the plugin, so a host's install stays small; it is imported when a
 * feature first needs it. `requirePackages` runs first, so that a missing package stops the start with
 * CHANGEFEED_MISSING_PACKAGE naming the feature, every missing package and the command that installs them.
 */
import { existsSync, readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { MissingPackageError } from './errors.js'

/** The package's root folder, found from this file whether it runs from lib/ (tests) or dist/lib/ (built). */
export const packageRoot: string = (() => {
  let dir = dirname(fileURLToPath(import.meta.url))
  while (!existsSync(join(dir, 'package.json')) || !existsSync(join(dir, 'sql'))) {
    const parent = dirname(dir)
    if (parent === dir) throw new Error('fastify-changefeed: cannot find the package root (sql/ folder)')
    dir = parent
  }
  return dir
})()

/** This package's version, for telemetry. */
export const packageVersion: string = (JSON.parse(readFileSync(join(packageRoot, 'package.json'), 'utf8')) as { version: string }).version

const resolver = createRequire(import.meta.url)

/** True when `name` resolves from this package (where its own imports of `name` resolve). */
export function isInstalled (name: string): boolean {
  try {
    resolver.resolve(name)
    return true
  } catch (err) {
    // a package that exists but exports nothing to require() is installed too
    return (err as { code?: string }).code !== 'MODULE_NOT_FOUND'
  }
}

/** `name@range` as this package's peerDependencies ask for it, so the install command gets a version that fits. */
export function installSpec (name: string): string {
  const manifest = JSON.parse(readFileSync(join(packageRoot, 'package.json'), 'utf8')) as { peerDependencies?: Record<string, string> }
  const range = manifest.peerDependencies?.[name]
  return range === undefined ? name : `${name}@${range}`
}

/** Throws CHANGEFEED_MISSING_PACKAGE when any of `names`, which `feature` needs, is not installed. */
export function requirePackages (feature: string, names: readonly string[]): void {
  const missing = names.filter((name) => !isInstalled(name))
  if (missing.length > 0) throw new MissingPackageError(feature, missing.join(', '), missing.map(installSpec).join(' '))
}
