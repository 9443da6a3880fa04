/**
 * tap's coverage map (.taprc `coverage-map`): whatever a test file runs, coverage is measured on lib/ only, the
 * code the package ships (compiled to dist/lib, reported against lib/*.ts through the source maps); test helpers and
 * fixtures would only inflate it.
 */
export default () => 'dist/lib/**/*.js'
