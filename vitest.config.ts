import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Builds dist/ (tsc) first: workers and daemons run the compiled code.
    globalSetup: ['test/support/global-setup.ts'],
    pool: 'forks',
    // Node 20.20 aborts the whole test process (a native assertion in
    // ModuleWrap::CreateRequiredModuleFacade, or "IsGraphAsync must be used on an instantiated
    // module") when piscina's worker require()s the threads engine's ES module in a test fork;
    // seen twice in a row in fresh-clone CI on 2026-12-02. Without require(esm), piscina's
    // require fails cleanly and it falls back to import(), as on Node before 20.19.
    poolOptions: { forks: { execArgv: ['--no-experimental-require-module'] } },
    testTimeout: 60_000,
    hookTimeout: 120_000,
    reporters: ['default'],
  },
});
