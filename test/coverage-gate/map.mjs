/**
 * tap's coverage map (.taprc `coverage-map`): whatever a test file runs, coverage is measured on lib/ only, the
 * code the package ships; test helpers and fixtures would only inflate it.
 */
export default () => 'lib/**/*.ts'
