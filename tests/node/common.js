'use strict';
// What the seed-client scripts share: their settings from the environment,
// how they fail, and the ISO-8601 check the protocols need.

const assert = require('node:assert/strict');

function requiredEnv(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`FAIL: environment variable ${name} is not set`);
    process.exit(2);
  }
  return v.replace(/\/+$/, '');
}

/** A `fail(msg)` that names the script's dialect and exits 1. */
function failWith(label) {
  return (msg) => {
    console.error(`FAIL (${label}): ${msg}`);
    process.exit(1);
  };
}

const ISO_8601 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2})$/;
function assertIso(value, what) {
  assert.equal(typeof value, 'string', `${what} must be a string, got ${JSON.stringify(value)}`);
  assert.match(value, ISO_8601, `${what} must be ISO-8601 with a zone, got ${JSON.stringify(value)}`);
  assert.ok(!Number.isNaN(Date.parse(value)), `${what} must parse as a date: ${value}`);
}

module.exports = { requiredEnv, failWith, assertIso };
