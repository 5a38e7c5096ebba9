"""NSError / Objective-C exception -> ANEError mapping, with stand-in error objects."""

from __future__ import annotations

import pickle

import pytest

from anekit.backends.ane.errors import (
    STEPS,
    ANEError,
    call,
    check_bool,
    check_object,
    from_exception,
    from_nserror,
    objc_step,
)


class FakeNSError:
    """Duck-types the NSError methods PyObjC exposes."""

    def __init__(self, domain, code, description, info=None):
        self._d, self._c, self._desc, self._info = domain, code, description, info or {}

    def domain(self):
        return self._d

    def code(self):
        return self._c

    def localizedDescription(self):
        return self._desc

    def userInfo(self):
        return self._info


class FakeObjCException(Exception):
    """What PyObjC raises for an Objective-C exception: `_pyobjc_info_` carries name/reason."""

    def __init__(self, name, reason, info=None):
        super().__init__(f"{name} - {reason}")
        self._pyobjc_info_ = {"name": name, "reason": reason, "userInfo": info}


def test_nserror_carries_domain_code_and_compiler_message():
    err = FakeNSError(
        "com.apple.appleneuralengine",
        5,
        "Compilation failed",
        {
            "NSLocalizedDescription": "Compilation failed",
            "ANECompilerLog": "error: unsupported op rsqrt at line 7",
        },
    )
    e = from_nserror("compile", "compileWithQoS:options:error:", err)
    assert isinstance(e, ANEError) and isinstance(e, RuntimeError)
    assert e.step == "compile" and e.domain == "com.apple.appleneuralengine" and e.code == 5
    text = str(e)
    assert text.startswith(
        "ANE compile failed: compileWithQoS:options:error: returned NO: Compilation failed"
    )
    assert "unsupported op rsqrt at line 7" in text
    assert text.count("Compilation failed") == 1  # the repeated description is not repeated
    assert "com.apple.appleneuralengine code 5" in text
    assert e.details["ANECompilerLog"] == "error: unsupported op rsqrt at line 7"


def test_nested_underlying_error_is_summarised():
    inner = FakeNSError("ANEServicesErrorDomain", 29, "Program load failure (0x1d)")
    e = from_nserror(
        "load", "loadWithQoS:options:error:", FakeNSError("D", 1, "load", {"NSUnderlyingError": inner})
    )
    assert "Program load failure (0x1d) (ANEServicesErrorDomain code 29)" in str(e)


def test_silent_failure_without_nserror_is_named():
    e = from_nserror("eval", "evaluateWithQoS:options:request:error:", None)
    assert "returned NO/nil without an NSError" in str(e) and e.domain is None


def test_objc_exception_maps_to_name_and_reason():
    exc = FakeObjCException("NSInvalidArgumentException", "-[_ANERequest foo]: unrecognized selector")
    e = from_exception("request", "requestWithInputs:...", exc)
    assert e.step == "request" and e.name == "NSInvalidArgumentException"
    assert "unrecognized selector" in str(e) and "NSInvalidArgumentException" in str(e)


def test_plain_python_exception_maps_too():
    e = from_exception(
        "descriptor", "modelWithMILText:weights:optionsPlist:", TypeError("depythonifying 'id'")
    )
    assert e.name == "TypeError" and "depythonifying 'id'" in str(e)


def test_check_bool_accepts_pyobjc_out_argument_tuples():
    check_bool("compile", "x", (True, None))
    check_bool("compile", "x", True)
    with pytest.raises(ANEError, match="ANE unload failed: unloadWithQoS:error: returned NO: busy"):
        check_bool("unload", "unloadWithQoS:error:", (False, FakeNSError("D", 3, "busy")))
    with pytest.raises(ANEError, match="without an NSError"):
        check_bool("compile", "compileWithQoS:options:error:", (False, None))
    with pytest.raises(ANEError, match="without an NSError"):
        check_bool("compile", "compileWithQoS:options:error:", 0)


def test_check_object_and_call():
    assert check_object("model", "m", 5) == 5
    with pytest.raises(ANEError, match="ANE model failed: inMemoryModelWithDescriptor: returned nil"):
        check_object("model", "inMemoryModelWithDescriptor:", None)

    def boom():
        raise FakeObjCException("NSRangeException", "index 3 beyond bounds")

    with pytest.raises(ANEError) as info:
        call("eval", "evaluateWithQoS:options:request:error:", boom)
    assert info.value.step == "eval" and "index 3 beyond bounds" in str(info.value)
    assert isinstance(info.value.__cause__, FakeObjCException)
    assert call("eval", "f", lambda a, b: a + b, 2, 3) == 5


def test_objc_step_keeps_ane_errors_as_they_are():
    original = ANEError("load", "first")
    with pytest.raises(ANEError) as info, objc_step("eval", "x"):
        raise original
    assert info.value is original


def test_unknown_step_is_a_bug():
    with pytest.raises(ValueError):
        ANEError("compiling", "x")
    assert {"compile", "load", "eval", "unload"} <= set(STEPS)


def test_ane_error_pickles_whole():
    e = from_nserror("compile", "c", FakeNSError("D", 7, "bad", {"log": "line 3"}))
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is ANEError and str(back) == str(e)
    assert (back.step, back.domain, back.code, back.details) == ("compile", "D", 7, {"log": "line 3"})


def test_broken_error_objects_do_not_hide_the_failure():
    class Broken:
        def localizedDescription(self):
            raise RuntimeError("no")

        def domain(self):
            raise RuntimeError("no")

        def code(self):
            return "not a number"

        def userInfo(self):
            raise RuntimeError("no")

    e = from_nserror("compile", "compileWithQoS:options:error:", Broken())
    assert e.step == "compile" and "compileWithQoS:options:error:" in str(e)
