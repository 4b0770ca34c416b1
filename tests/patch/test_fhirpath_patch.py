"""FHIRPath Patch (R4 fhirpatch.html): each operation type, the FHIRPath subset, values built from
value[x] and from parts, decimals kept exact, and the status of every kind of failure."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from fhir_server.errors import FhirError
from fhir_server.model import jsonio
from fhir_server.model.jsonio import JsonDecimal
from fhir_server.patch.fhirpath_patch import apply_fhirpath_patch


def J(text: str) -> Any:
    """Parse as the server does, so 1.50 arrives as a JsonDecimal."""
    return jsonio.loads(text)


def op(kind: str, path: str, *, name: str | None = None, value: dict[str, Any] | None = None,
       index: int | None = None, source: int | None = None, destination: int | None = None) -> dict[str, Any]:
    """One 'operation' parameter; ``value`` is the content of the value part (value[x], part or resource)."""
    parts: list[dict[str, Any]] = [{"name": "type", "valueCode": kind}, {"name": "path", "valueString": path}]
    if name is not None:
        parts.append({"name": "name", "valueString": name})
    if value is not None:
        parts.append({"name": "value", **value})
    for part_name, number in (("index", index), ("source", source), ("destination", destination)):
        if number is not None:
            parts.append({"name": part_name, "valueInteger": number})
    return {"name": "operation", "part": parts}


def part(name: str, **content: Any) -> dict[str, Any]:
    return {"name": name, **content}


def params(*operations: Any) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(operations)}


def patched(resource: dict[str, Any], parameters: dict[str, Any]) -> dict[str, Any]:
    """Apply, and check on the way that neither input was changed."""
    before, params_before = copy.deepcopy(resource), copy.deepcopy(parameters)
    result = apply_fhirpath_patch(resource, parameters)
    assert resource == before
    assert parameters == params_before
    assert result is not resource
    return result


def failure(resource: dict[str, Any], parameters: dict[str, Any], status: int, code: str) -> str:
    before = copy.deepcopy(resource)
    with pytest.raises(FhirError) as info:
        apply_fhirpath_patch(resource, parameters)
    assert resource == before
    err = info.value
    assert (err.status, err.issues[0].code) == (status, code), err.issues
    return err.issues[0].diagnostics


PATIENT_JSON = """{
  "resourceType": "Patient",
  "id": "example",
  "identifier": [{"use": "usual", "system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"}],
  "active": true,
  "name": [
    {"use": "official", "family": "Chalmers", "given": ["Peter", "James"]},
    {"use": "usual", "given": ["Jim"]}
  ],
  "telecom": [
    {"system": "phone", "value": "(03) 5555 6473", "use": "work", "rank": 1},
    {"system": "phone", "value": "(03) 3410 5613", "use": "mobile", "rank": 2}
  ],
  "gender": "male",
  "birthDate": "1974-12-25"
}"""


def patient(**changes: Any) -> dict[str, Any]:
    """The example Patient; a member given as None is removed."""
    resource: dict[str, Any] = J(PATIENT_JSON)
    for key, value in changes.items():
        if value is None:
            del resource[key]
        else:
            resource[key] = value
    return resource


OBSERVATION_JSON = """{
  "resourceType": "Observation",
  "id": "bp",
  "status": "final",
  "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
  "valueQuantity": {"value": 120, "unit": "mmHg"},
  "interpretation": [{"text": "normal"}],
  "component": [
    {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
     "valueQuantity": {"value": 107, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
    {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
     "valueQuantity": {"value": 60, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
  ]
}"""


def observation() -> dict[str, Any]:
    resource: dict[str, Any] = J(OBSERVATION_JSON)
    return resource


# ================================================================================================
# add
# ================================================================================================


def test_spec_example_add_birth_date() -> None:
    result = patched(patient(birthDate=None), params(
        op("add", "Patient", name="birthDate", value={"valueDate": "1930-01-01"})))
    assert result == patient(birthDate="1930-01-01")


def test_spec_example_add_contact_from_parts() -> None:
    # The spec's second example: an anonymous (backbone) element built from parts.
    result = patched(patient(), params(op("add", "Patient", name="contact", value={
        "part": [part("name", valueHumanName={"text": "a name"})]})))
    assert result == patient(contact=[{"name": {"text": "a name"}}])


def test_add_identifier_from_parts_appends() -> None:
    result = patched(patient(), params(op("add", "Patient", name="identifier", value={"part": [
        part("system", valueUri="http://example.org/mrn"),
        part("value", valueString="MRN-7"),
        part("type", part=[part("text", valueString="Medical record number")]),
    ]})))
    assert result == patient(identifier=[
        {"use": "usual", "system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"},
        {"system": "http://example.org/mrn", "value": "MRN-7", "type": {"text": "Medical record number"}},
    ])


def test_add_identifier_as_typed_value() -> None:
    identifier = {"system": "http://example.org/mrn", "value": "MRN-7"}
    result = patched(patient(identifier=None), params(
        op("add", "Patient", name="identifier", value={"valueIdentifier": identifier})))
    assert result == patient(identifier=[identifier])


def test_add_repeating_parts_collect_into_lists() -> None:
    result = patched(patient(name=None), params(op("add", "Patient", name="name", value={"part": [
        part("family", valueString="Windsor"),
        part("given", valueString="Charles"),
        part("given", valueString="Philip"),
    ]})))
    assert result == patient(name=[{"family": "Windsor", "given": ["Charles", "Philip"]}])


def test_add_given_to_a_name_selected_with_where() -> None:
    result = patched(patient(), params(
        op("add", "Patient.name.where(use = 'usual')", name="given", value={"valueString": "Jimmy"})))
    expected = patient()
    expected["name"][1]["given"] = ["Jim", "Jimmy"]
    assert result == expected


def test_add_member_to_a_name_without_it() -> None:
    result = patched(patient(), params(op("add", "Patient.name[1]", name="family", value={"valueString": "C"})))
    expected = patient()
    expected["name"][1]["family"] = "C"
    assert result == expected


def test_add_choice_element_by_base_name() -> None:
    result = patched(patient(), params(op("add", "Patient", name="deceased", value={"valueBoolean": False})))
    assert result == patient(deceasedBoolean=False)


def test_add_choice_element_by_typed_name() -> None:
    result = patched(patient(), params(
        op("add", "Patient", name="deceasedDateTime", value={"valueDateTime": "2020-01-01"})))
    assert result == patient(deceasedDateTime="2020-01-01")


def test_add_choice_element_when_another_type_is_present_is_422() -> None:
    message = failure(patient(deceasedBoolean=False), params(
        op("add", "Patient", name="deceased", value={"valueDateTime": "2020-01-01"})), 422, "processing")
    assert "already has a value (deceasedBoolean)" in message


def test_add_extension_with_nested_choice_parts() -> None:
    result = patched(patient(), params(op("add", "Patient", name="extension", value={"part": [
        part("url", valueUri="http://example.org/ext"),
        part("value", valueCodeableConcept={"text": "x"}),
    ]})))
    assert result == patient(extension=[{"url": "http://example.org/ext", "valueCodeableConcept": {"text": "x"}}])


def test_add_contained_resource() -> None:
    org = {"resourceType": "Organization", "id": "o1", "name": "Acme"}
    result = patched(patient(), params(op("add", "Patient", name="contained", value={"resource": org})))
    assert result == patient(contained=[org])


def test_add_meta_and_code_from_string_value() -> None:
    # A valueString fits a code (same JSON form); the validator checks the code afterwards.
    result = patched(patient(gender=None), params(
        op("add", "Patient", name="gender", value={"valueString": "female"}),
        op("add", "Patient", name="meta", value={"part": [part("tag", valueCoding={"code": "t"})]}),
    ))
    assert result == patient(gender="female", meta={"tag": [{"code": "t"}]})


def test_add_to_an_existing_single_element_is_422() -> None:
    message = failure(patient(), params(op("add", "Patient", name="birthDate", value={"valueDate": "1930-01-01"})),
                      422, "processing")
    assert message == ("FHIRPath Patch operation 0 (add at 'Patient'): Patient.birthDate already has a value "
                       "(birthDate) and does not repeat; use replace")


def test_add_path_selecting_several_elements_is_422() -> None:
    message = failure(patient(), params(op("add", "Patient.name", name="text", value={"valueString": "x"})),
                      422, "processing")
    assert "the path selects 2 elements; add needs exactly one" in message


def test_add_path_selecting_nothing_is_422() -> None:
    message = failure(patient(), params(op("add", "Patient.contact", name="gender", value={"valueCode": "male"})),
                      422, "processing")
    assert "the path selects no element" in message


def test_add_unknown_element_is_400() -> None:
    message = failure(patient(), params(op("add", "Patient", name="nickname", value={"valueString": "x"})),
                      400, "invalid")
    assert "Patient has no element 'nickname'" in message


def test_add_to_a_primitive_is_refused() -> None:
    failure(patient(), params(op("add", "Patient.birthDate", name="extension", value={"part": [
        part("url", valueUri="http://example.org")]})), 422, "not-supported")


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("active", {"valueString": "true"}, "a string value does not fit active, which takes boolean"),
        ("birthDate", {"valueBoolean": True}, "a boolean value does not fit birthDate"),
        ("maritalStatus", {"valueCoding": {"code": "M"}}, "a Coding value does not fit maritalStatus"),
        ("deceased", {"valueString": "yes"}, "a string value does not fit deceased, which takes boolean|dateTime"),
        ("deceased", {"part": [part("x", valueString="y")]}, "can hold several types"),
        ("maritalStatus", {"valueString": "M"}, "does not fit maritalStatus"),
        ("active", {"part": [part("value", valueBoolean=True)]}, "is a primitive (boolean)"),
        ("contained", {"part": [part("id", valueId="x")]}, "give it as a resource"),
        ("name", {"resource": {"resourceType": "Basic"}}, "name does not hold a resource"),
        ("contained", {"resource": {"id": "x"}}, "'resource' must be a resource with a resourceType"),
        ("name", {"part": []}, "'part' must be a non-empty array"),
        ("name", {"part": [part("nickname", valueString="x")]}, "HumanName has no element 'nickname'"),
        ("name", {"part": [part("family", valueString="a"), part("family", valueString="b")]},
         "HumanName.family does not repeat"),
        ("name", {"part": [{"valueString": "x"}]}, "every part needs a name"),
        ("name", {"valueHumanName": "Peter"}, "valueHumanName must be a JSON object, not str"),
        ("active", {"valueBoolean": "true"}, "valueBoolean must be a JSON boolean, not str"),
        ("multipleBirth", {"valueInteger": True}, "valueInteger must be a JSON integer, not bool"),
        ("birthDate", {"valueDate": 19741225}, "valueDate must be a JSON string, not int"),
        ("birthDate", {"valueFoo": "x"}, "valueFoo is not a FHIR data type"),
        ("birthDate", {}, "needs exactly one of value[x], part or resource"),
        ("birthDate", {"valueDate": "1974", "valueString": "1974"}, "not valueDate, valueString"),
    ],
)
def test_add_bad_values_are_400(name: str, value: dict[str, Any], reason: str) -> None:
    message = failure(patient(birthDate=None, active=None), params(op("add", "Patient", name=name, value=value)),
                      400, "invalid")
    assert reason in message


def test_primitive_extension_on_the_value_is_not_supported() -> None:
    failure(patient(), params(op("add", "Patient", name="deceased", value={
        "valueBoolean": True, "_valueBoolean": {"extension": []}})), 400, "not-supported")


# ================================================================================================
# insert
# ================================================================================================


def test_insert_identifier_at_the_start() -> None:
    new = {"system": "http://example.org/mrn", "value": "MRN-7"}
    result = patched(patient(), params(op("insert", "Patient.identifier", index=0, value={"valueIdentifier": new})))
    assert result == patient(identifier=[new, {"use": "usual", "system": "urn:oid:1.2.36.146.595.217.0.1",
                                               "value": "12345"}])


def test_insert_telecom_from_parts_in_the_middle_and_at_the_end() -> None:
    email = [part("system", valueCode="email"), part("value", valueString="p@example.org")]
    result = patched(patient(), params(
        op("insert", "Patient.telecom", index=1, value={"part": email}),
        op("insert", "Patient.telecom", index=3, value={"valueContactPoint": {"system": "fax", "value": "1"}}),
    ))
    work, mobile = patient()["telecom"]
    assert result == patient(telecom=[work, {"system": "email", "value": "p@example.org"}, mobile,
                                      {"system": "fax", "value": "1"}])


def test_insert_given_name() -> None:
    result = patched(patient(), params(
        op("insert", "Patient.name.where(use = 'official').given", index=1, value={"valueString": "Jacob"})))
    expected = patient()
    expected["name"][0]["given"] = ["Peter", "Jacob", "James"]
    assert result == expected


def test_insert_into_a_missing_list_creates_it() -> None:
    result = patched(patient(), params(op("insert", "Patient.address", index=0, value={"valueAddress": {"city": "X"}})))
    assert result == patient(address=[{"city": "X"}])


@pytest.mark.parametrize(("path", "index"), [("Patient.address", 1), ("Patient.telecom", 3)])
def test_insert_past_the_end_is_422(path: str, index: int) -> None:
    message = failure(patient(), params(op("insert", path, index=index, value={"valueAddress": {"city": "X"}})),
                      422, "processing")
    assert f"index {index} is past the end of the list" in message


def test_insert_into_the_lists_of_several_elements_is_422() -> None:
    message = failure(patient(), params(op("insert", "Patient.name.given", index=0, value={"valueString": "A"})),
                      422, "processing")
    assert "the path selects the 'given' lists of 2 elements" in message


def test_insert_under_a_missing_element_is_422() -> None:
    failure(patient(), params(op("insert", "Patient.contact.telecom", index=0, value={"valueContactPoint": {}})),
            422, "processing")


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("Patient.birthDate", "Patient.birthDate is not a repeating element"),
        ("Patient.name[0]", "needs a path that ends with the name of a repeating element"),
        ("Patient.name.first()", "needs a path that ends with the name of a repeating element"),
        ("Patient", "needs a path that ends with the name of a repeating element"),
        ("Patient.nickname", "Patient has no element 'nickname'"),
    ],
)
def test_insert_bad_paths_are_400(path: str, reason: str) -> None:
    message = failure(patient(), params(op("insert", path, index=0, value={"valueString": "x"})), 400, "invalid")
    assert reason in message


# ================================================================================================
# delete
# ================================================================================================


def test_delete_single_element() -> None:
    assert patched(patient(), params(op("delete", "Patient.birthDate"))) == patient(birthDate=None)


def test_delete_last_list_item_removes_the_list() -> None:
    assert patched(patient(), params(op("delete", "Patient.identifier[0]"))) == patient(identifier=None)


def test_delete_list_item_selected_with_where() -> None:
    result = patched(patient(), params(op("delete", "Patient.telecom.where(use = 'mobile')")))
    assert result == patient(telecom=[patient()["telecom"][0]])


def test_delete_given_by_this() -> None:
    result = patched(patient(), params(op("delete", "Patient.name.given.where($this = 'James')")))
    expected = patient()
    expected["name"][0]["given"] = ["Peter"]
    assert result == expected


def test_delete_nothing_is_a_no_op() -> None:
    assert patched(patient(), params(op("delete", "Patient.contact"),
                                     op("delete", "Patient.name.where(use = 'maiden')"))) == patient()


def test_delete_several_is_422() -> None:
    message = failure(patient(), params(op("delete", "Patient.telecom")), 422, "processing")
    assert message == ("FHIRPath Patch operation 0 (delete at 'Patient.telecom'): the path selects 2 elements; "
                       "delete needs at most one")


def test_delete_the_resource_is_400() -> None:
    failure(patient(), params(op("delete", "Patient")), 400, "invalid")


def test_delete_id_and_meta_is_allowed_here() -> None:
    result = patched(patient(meta={"versionId": "3"}), params(op("delete", "Patient.meta"), op("delete", "Patient.id")))
    assert result == patient(id=None)


def test_delete_choice_element_by_base_name() -> None:
    result = patched(observation(), params(op("delete", "Observation.value")))
    expected = observation()
    del expected["valueQuantity"]
    assert result == expected


def test_delete_element_with_primitive_extensions_is_refused() -> None:
    resource = patient(_birthDate={"extension": [{"url": "http://example.org", "valueString": "x"}]})
    message = failure(resource, params(op("delete", "Patient.birthDate")), 422, "not-supported")
    assert "'birthDate' has primitive extensions ('_birthDate')" in message


# ================================================================================================
# replace
# ================================================================================================


def test_replace_birth_date() -> None:
    result = patched(patient(), params(op("replace", "Patient.birthDate", value={"valueDate": "1974-12-26"})))
    assert result == patient(birthDate="1974-12-26")


def test_replace_family_of_the_official_name() -> None:
    result = patched(patient(), params(
        op("replace", "Patient.name.where(use = 'official').family", value={"valueString": "Chalmers-Smith"})))
    expected = patient()
    expected["name"][0]["family"] = "Chalmers-Smith"
    assert result == expected


def test_replace_telecom_value_with_and_criteria() -> None:
    result = patched(patient(), params(op(
        "replace", "Patient.telecom.where(system = 'phone' and use = 'work').value", value={"valueString": "555"})))
    expected = patient()
    expected["telecom"][0]["value"] = "555"
    assert result == expected


def test_replace_list_item_with_complex_value() -> None:
    result = patched(patient(), params(op("replace", "Patient.name[1]", value={"valueHumanName": {"text": "Jim C"}})))
    expected = patient()
    expected["name"][1] = {"text": "Jim C"}
    assert result == expected


def test_replace_list_item_from_parts() -> None:
    result = patched(patient(), params(op("replace", "Patient.telecom.last()", value={"part": [
        part("system", valueCode="email"), part("value", valueString="p@example.org"), part("rank", valuePositiveInt=2),
    ]})))
    expected = patient()
    expected["telecom"][1] = {"system": "email", "value": "p@example.org", "rank": 2}
    assert result == expected


def test_replace_boolean_and_positive_int() -> None:
    result = patched(patient(), params(
        op("replace", "Patient.active", value={"valueBoolean": False}),
        op("replace", "Patient.telecom.where(rank = 2).rank", value={"valueInteger": 3}),
    ))
    expected = patient(active=False)
    expected["telecom"][1]["rank"] = 3
    assert result == expected


def test_replace_nothing_is_422() -> None:
    message = failure(patient(), params(op("replace", "Patient.name.where(use = 'maiden').family",
                                           value={"valueString": "x"})), 422, "processing")
    assert "the path selects no element" in message


def test_replace_several_is_422() -> None:
    message = failure(patient(), params(op("replace", "Patient.telecom.where(use = 'work' or use = 'mobile').value",
                                           value={"valueString": "x"})), 422, "processing")
    assert "the path selects 2 elements; replace needs exactly one" in message


def test_replace_the_resource_is_400() -> None:
    failure(patient(), params(op("replace", "Patient", value={"valueString": "x"})), 400, "invalid")


def test_replace_id() -> None:
    assert patched(patient(), params(op("replace", "Patient.id", value={"valueId": "other"}))) == patient(id="other")


# -- choice elements and decimals ----------------------------------------------------------------


def test_replace_choice_value_quantity_keeps_decimal_text() -> None:
    value = J('{"value": 1.50, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}')
    result = patched(observation(), params(op("replace", "Observation.value", value={"valueQuantity": value})))
    expected = observation()
    expected["valueQuantity"] = value
    assert result == expected
    assert isinstance(result["valueQuantity"]["value"], JsonDecimal)
    assert b'"valueQuantity":{"value":1.50,"unit":"mmHg"' in jsonio.dumps(result)


def test_replace_decimal_inside_choice_element() -> None:
    parameters = J("""{"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "replace"},
        {"name": "path", "valueString": "Observation.value.ofType(Quantity).value"},
        {"name": "value", "valueDecimal": 1.50}]}]}""")
    result = patched(observation(), parameters)
    assert jsonio.dumps(result["valueQuantity"]) == b'{"value":1.50,"unit":"mmHg"}'


def test_replace_with_typed_choice_name() -> None:
    result = patched(observation(), params(op("replace", "Observation.valueQuantity.unit", value={"valueString": "mm"})))
    expected = observation()
    expected["valueQuantity"]["unit"] = "mm"
    assert result == expected


def test_replace_choice_element_with_another_type_keeps_its_place() -> None:
    result = patched(observation(), params(op("replace", "Observation.value", value={"valueString": "high"})))
    expected = observation()
    expected["valueQuantity"] = "high"
    assert result == {("valueString" if k == "valueQuantity" else k): v for k, v in expected.items()}
    assert list(result) == ["resourceType", "id", "status", "code", "valueString", "interpretation", "component"]


def test_replace_choice_with_a_type_it_does_not_take_is_400() -> None:
    message = failure(observation(), params(op("replace", "Observation.value", value={"valueCode": "high"})),
                      400, "invalid")
    assert "a code value does not fit value, which takes Quantity|CodeableConcept|string" in message


def test_integer_into_decimal_and_float_into_decimal() -> None:
    result = patched(observation(), params(
        op("replace", "Observation.value.value", value={"valueInteger": 121}),
        op("replace", "Observation.component[0].value.value", value={"valueDecimal": 107.5}),
    ))
    assert result["valueQuantity"]["value"] == 121
    assert isinstance(result["component"][0]["valueQuantity"]["value"], JsonDecimal)
    assert jsonio.dumps(result["component"][0]["valueQuantity"]["value"]) == b"107.5"


def test_age_fits_quantity() -> None:
    result = patched(observation(), params(op("replace", "Observation.value", value={"valueAge": {"value": 3}})))
    assert result["valueQuantity"] == {"value": 3}


def test_component_selected_by_nested_coding() -> None:
    result = patched(observation(), params(op(
        "replace", "Observation.component.where(code.coding.code = '8462-4').value.value",
        value={"valueDecimal": J("61.0")})))
    expected = observation()
    expected["component"][1]["valueQuantity"]["value"] = J("61.0")
    assert result == expected
    assert b'"value":61.0' in jsonio.dumps(result)


# ================================================================================================
# move
# ================================================================================================


def test_move_names() -> None:
    result = patched(patient(), params(op("move", "Patient.name", source=0, destination=1)))
    official, usual = patient()["name"]
    assert result == patient(name=[usual, official])


def test_move_towards_the_start() -> None:
    lst = [{"text": str(i)} for i in range(4)]
    result = patched(patient(address=lst), params(op("move", "Patient.address", source=3, destination=1)))
    assert [a["text"] for a in result["address"]] == ["0", "3", "1", "2"]


def test_move_onto_itself() -> None:
    assert patched(patient(), params(op("move", "Patient.telecom", source=1, destination=1))) == patient()


@pytest.mark.parametrize(("source", "destination", "reason"), [
    (2, 0, "source index 2 is out of range (the list has 2 elements)"),
    (0, 2, "destination index 2 is out of range"),
])
def test_move_out_of_range_is_422(source: int, destination: int, reason: str) -> None:
    message = failure(patient(), params(op("move", "Patient.name", source=source, destination=destination)),
                      422, "processing")
    assert reason in message


def test_move_in_a_missing_list_is_422() -> None:
    failure(patient(), params(op("move", "Patient.address", source=0, destination=0)), 422, "processing")


# ================================================================================================
# the FHIRPath subset
# ================================================================================================


@pytest.mark.parametrize(
    ("path", "family"),
    [
        ("Patient.name.first().family", "X"),
        ("Patient.name[0].family", "X"),
        ("name[0].family", "X"),
        ("Resource.name[0].family", "X"),
        ("DomainResource.name.where(family.exists()).family", "X"),
        ("Patient.name.where(family.empty()).family", None),
        ("Patient.name.where(family.exists().not()).family", None),
        ("Patient.name.where(use != 'usual').family", "X"),
        ("Patient.name.where(given = 'Peter').family", None),  # two given names never equal one literal
        ("Patient.name.where('official' = use).family", "X"),
        ("Patient.name.where((use = 'x' or use = 'official') and family = 'Chalmers').family", "X"),
        ("Patient.name.where((use = 'official').not()).family", None),
        ("Patient.name.where((use = 'usual' and family.exists()).not()).family", "X"),  # false and true is false
        ("Patient.name.where((use = 'usual' or family.exists()).not()).family", None),
        ("Patient.where(active = true).name.where(use = 'official').family", "X"),
        ("Patient.where(active).name[0].family", "X"),
        ("Patient.name.where(period.exists()).family", None),
        ("Patient.`name`[0].`family`", "X"),
        ("Patient . name [ 0 ] . family", "X"),
        ("Patient.name.where(use = 'off\\u0069cial').family", "X"),
    ],
)
def test_paths_select_the_expected_element(path: str, family: str | None) -> None:
    """Each path selects either official name's family (replaced with X) or nothing (no-op delete)."""
    if family is None:
        assert patched(patient(), params(op("delete", path))) == patient()
        return
    result = patched(patient(), params(op("replace", path, value={"valueString": family})))
    expected = patient()
    expected["name"][0]["family"] = family
    assert result == expected


def test_comparing_an_absent_element_is_empty_not_false() -> None:
    # name[1] has no family: "family = 'Chalmers'" is empty there, and so is its not(); only true selects.
    assert patched(patient(), params(op("delete", "Patient.name.where((family = 'Chalmers').not())"))) == patient()
    assert patched(patient(), params(op("delete", "Patient.name.where(family != 'Chalmers')"))) == patient()


def test_where_on_numbers_and_booleans() -> None:
    result = patched(patient(), params(
        op("delete", "Patient.telecom.where(rank = 2.0)"),
        op("replace", "Patient.telecom.where(rank = 1).rank", value={"valuePositiveInt": 5}),
    ))
    expected = patient()
    expected["telecom"] = [dict(expected["telecom"][0], rank=5)]
    assert result == expected


def test_where_decimal_comparison_ignores_trailing_zeros() -> None:
    obs = observation()
    obs["valueQuantity"]["value"] = J("1.50")
    result = patched(obs, params(op("replace", "Observation.value.where(value = 1.5).unit", value={"valueString": "g"})))
    assert result["valueQuantity"] == {"value": J("1.50"), "unit": "g"}


def test_string_literal_never_equals_a_number() -> None:
    assert patched(patient(), params(op("delete", "Patient.telecom.where(rank = '1')"))) == patient()


def test_of_type_on_contained_resources() -> None:
    resource = patient(contained=[{"resourceType": "Organization", "id": "o", "name": "Acme"},
                                  {"resourceType": "Practitioner", "id": "d", "name": [{"family": "Who"}]}])
    result = patched(resource, params(
        op("replace", "Patient.contained.ofType(Organization).name", value={"valueString": "Acme Inc"}),
        op("replace", "Patient.contained.where(id = 'd').name.family", value={"valueString": "Watson"}),
    ))
    expected = copy.deepcopy(resource)
    expected["contained"][0]["name"] = "Acme Inc"
    expected["contained"][1]["name"][0]["family"] = "Watson"
    assert result == expected


def test_of_type_on_choice_filters_other_types() -> None:
    assert patched(observation(), params(op("delete", "Observation.value.ofType(FHIR.string)"))) == observation()


def test_names_of_other_choice_types_select_nothing() -> None:
    # value is a Quantity here, so .coding (a CodeableConcept member) is simply empty.
    assert patched(observation(), params(op("delete", "Observation.value.coding"))) == observation()


def test_path_for_another_resource_type_is_422() -> None:
    message = failure(patient(), params(op("delete", "Observation.status")), 422, "processing")
    assert "the path starts at Observation but the resource is a Patient" in message


@pytest.mark.parametrize(
    "path",
    [
        "Patient.name | Patient.address",
        "Patient.name.select(given)",
        "Patient.name.given.count()",
        "Patient.name[-1]",
        "Patient.name[first()]",
        "Patient.birthDate > @2000-01-01",
        "%resource.name",
        "Patient..name",
        "Patient.name.",
        "Patient.name.where(use = 'official'",
        "Patient.name.where(use = family)",
        "Patient.name.where('official')",
        "Patient.name.where(use = 'a' xor use = 'b')",
        "Patient.name.where(given.count() > 1)",
        "Patient.name.where(exists() = true)",
        "Patient.name.exists()",
        "Patient.name.first(1)",
        "Patient.name.where(use = 'x', 'y')",
        "Patient.name.ofType(System.String)",
        "Patient.link.other.resolve()",
        "Patient.name.where(use = 'bad \\q escape')",
        "Patient.name.where(use = 'unterminated)",
        "Patient.name.where(use.not().exists())",
        "Patient.name.where((use = 'x').exists())",
        "Patient.name.ofType(Nonsense)",
        "",
    ],
)
def test_unsupported_fhirpath_is_400(path: str) -> None:
    message = failure(patient(), params(op("delete", path)), 400, "invalid")
    assert "unsupported FHIRPath in patch path" in message


def test_unknown_element_in_path_is_400() -> None:
    message = failure(patient(), params(op("delete", "Patient.name.nickname")), 400, "invalid")
    assert "HumanName has no element 'nickname'" in message


def test_unknown_type_at_the_start_is_400() -> None:
    failure(patient(), params(op("delete", "Nonsense.name")), 400, "invalid")


def test_primitive_extension_paths_are_refused() -> None:
    failure(patient(), params(op("delete", "Patient.birthDate.extension")), 400, "not-supported")


def test_navigating_into_a_primitive_is_400() -> None:
    message = failure(patient(), params(op("delete", "Patient.birthDate.year")), 400, "invalid")
    assert "date is a primitive type and has no element 'year'" in message


def test_where_needing_one_boolean_but_finding_several_is_422() -> None:
    failure(patient(), params(op("delete", "Patient.name.where(given)")), 422, "processing")


# ================================================================================================
# the Parameters document
# ================================================================================================


@pytest.mark.parametrize(
    ("parameters", "reason"),
    [
        ([], "must be a Parameters resource"),
        ({"resourceType": "Patient"}, "must be a Parameters resource"),
        ({"resourceType": "Parameters", "parameter": {}}, "Parameters.parameter must be an array"),
        (params("x"), "a parameter must be a JSON object"),
        (params({"name": "op", "part": []}), "the parameter is named 'op'"),
        (params({"name": "operation"}), "the operation has no parts"),
        (params({"name": "operation", "part": [{"valueCode": "add"}]}), "every part of an operation needs a name"),
        (params({"name": "operation", "part": [{"name": "kind", "valueCode": "add"}]}), "unknown part 'kind'"),
        (params({"name": "operation", "part": [part("type", valueCode="delete"), part("type", valueCode="delete")]}),
         "the part 'type' appears more than once"),
        (params({"name": "operation", "part": [part("path", valueString="Patient.id")]}), "has no 'type' part"),
        (params(op("remove", "Patient.id")), "unknown operation type 'remove'"),
        (params({"name": "operation", "part": [part("type", valueInteger=1)]}), "the part 'type' needs"),
        (params({"name": "operation", "part": [part("type", valueCode=1), part("path", valueString="Patient")]}),
         "the part 'type' has a int where a str belongs"),
        (params({"name": "operation", "part": [part("type", valueCode="delete")]}), "'delete' needs the part(s) path"),
        (params(op("add", "Patient", value={"valueString": "x"})), "'add' needs the part(s) name"),
        (params(op("add", "Patient", name="gender")), "'add' needs the part(s) value"),
        (params(op("insert", "Patient.name", value={"valueString": "x"})), "'insert' needs the part(s) index"),
        (params(op("replace", "Patient.id")), "'replace' needs the part(s) value"),
        (params(op("move", "Patient.name", source=0)), "'move' needs the part(s) destination"),
        (params(op("insert", "Patient.name", index=-1, value={"valueString": "x"})), "must not be negative"),
        (params({"name": "operation", "part": [part("type", valueCode="insert"), part("path", valueString="Patient.name"),
                                               part("value", valueString="x"), part("index", valueString="0")]}),
         "the part 'index' needs valueInteger or valueUnsignedInt or valuePositiveInt"),
        (params({"name": "operation", "part": [part("type", valueCode="insert"), part("path", valueString="Patient.name"),
                                               part("value", valueString="x"), part("index", valueInteger=True)]}),
         "the part 'index' has a bool where a int belongs"),
        (params({"name": "operation", "part": [part("type", valueCode="delete"), part("path", valueString=J("1.5"))]}),
         "the part 'path' has a JsonDecimal where a str belongs"),
    ],
)
def test_malformed_parameters_are_400(parameters: Any, reason: str) -> None:
    message = failure(patient(), parameters, 400, "invalid")
    assert reason in message


def test_the_whole_document_is_checked_before_anything_applies() -> None:
    # Operation 0 could not be applied, but operation 1 is malformed: the malformed document wins.
    with pytest.raises(FhirError) as info:
        apply_fhirpath_patch(patient(), params(op("delete", "Patient.name"), op("delete", "Patient.name[")))
    err = info.value
    assert err.status == 400
    assert err.issues[0].diagnostics.startswith("FHIRPath Patch operation 1: unsupported FHIRPath in patch path")
    assert err.issues[0].expression == ("Parameters.parameter[1]",)


def test_errors_name_the_failing_operation() -> None:
    with pytest.raises(FhirError) as info:
        apply_fhirpath_patch(patient(), params(
            op("delete", "Patient.birthDate"),
            op("replace", "Patient.gender", value={"valueCode": "female"}),
            op("replace", "Patient.birthDate", value={"valueDate": "2000-01-01"}),
        ))
    err = info.value
    assert err.status == 422
    assert err.issues[0].diagnostics == ("FHIRPath Patch operation 2 (replace at 'Patient.birthDate'): "
                                         "the path selects no element")
    assert err.issues[0].expression == ("Parameters.parameter[2]",)


def test_type_as_value_string_and_index_as_unsigned_int_are_accepted() -> None:
    parameters = params({"name": "operation", "part": [
        part("type", valueString="insert"), part("path", valueString="Patient.name"),
        part("value", valueHumanName={"text": "N"}), part("index", valueUnsignedInt=0)]})
    assert patched(patient(), parameters)["name"][0] == {"text": "N"}


def test_parts_of_other_operations_are_ignored() -> None:
    parameters = params(op("delete", "Patient.birthDate", name="ignored", index=4))
    assert patched(patient(), parameters) == patient(birthDate=None)


def test_empty_parameters_return_an_equal_copy() -> None:
    resource = patient()
    result = patched(resource, {"resourceType": "Parameters"})
    assert result == resource
    assert result["name"] is not resource["name"]


def test_operations_apply_in_order() -> None:
    result = patched(patient(), params(
        op("add", "Patient", name="address", value={"valueAddress": {"city": "A"}}),
        op("add", "Patient", name="address", value={"valueAddress": {"city": "B"}}),
        op("move", "Patient.address", source=1, destination=0),
        op("replace", "Patient.address.where(city = 'A').city", value={"valueString": "C"}),
        op("delete", "Patient.address.where(city = 'B')"),
    ))
    assert result == patient(address=[{"city": "C"}])


def test_result_shares_nothing_with_the_parameters() -> None:
    parameters = params(op("add", "Patient", name="address", value={"valueAddress": {"line": ["1 Main St"]}}))
    result = patched(patient(), parameters)
    result["address"][0]["line"].append("Flat 2")
    assert parameters["parameter"][0]["part"][3]["valueAddress"] == {"line": ["1 Main St"]}


def test_malformed_resource_gives_422_not_a_crash() -> None:
    message = failure(patient(identifier="x"), params(op("insert", "Patient.identifier", index=0,
                                                         value={"valueIdentifier": {"value": "1"}})),
                      422, "processing")
    assert "identifier holds a str, not an array" in message
    failure({"id": "x"}, params(op("delete", "Patient.id")), 422, "processing")
