use super::*;
use std::collections::BTreeMap;

fn data() -> Value {
    let mut m = BTreeMap::new();
    m.insert("Name".to_string(), Value::from("Dwaar"));
    m.insert("N".to_string(), Value::Int(3));
    m.insert(
        "Items".to_string(),
        Value::from(vec![Value::from("a"), Value::from("b"), Value::from("c")]),
    );
    let mut inner = BTreeMap::new();
    inner.insert("title".to_string(), Value::from("Hello <world>"));
    inner.insert("z".to_string(), Value::Int(1));
    m.insert("Meta".to_string(), Value::from(inner));
    m.insert("Empty".to_string(), Value::from(""));
    Value::from(m)
}

fn run(t: &str) -> String {
    Engine::new()
        .render("t", t, data())
        .unwrap_or_else(|e| panic!("{t}: {e}"))
}

fn fails(t: &str) -> String {
    match Engine::new().render("t", t, data()) {
        Ok(s) => panic!("{t}: rendered {s:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn text_fields_and_printing() {
    assert_eq!(run("hi {{.Name}}!"), "hi Dwaar!");
    assert_eq!(run("{{.Meta.title}}"), "Hello <world>");
    assert_eq!(run("{{.Meta.missing}}"), "<no value>");
    assert_eq!(run("{{.Items}}"), "[a b c]");
    assert_eq!(run("{{.Meta}}"), "map[title:Hello <world> z:1]");
    assert_eq!(
        run("{{1.5}} {{1e6}} {{0x1F}} {{'a'}} {{true}}"),
        "1.5 1e+06 31 97 true"
    );
    assert_eq!(run(r#"{{"a\tb"}}|{{`raw\n`}}"#), "a\tb|raw\\n");
}

#[test]
fn trim_markers_and_comments() {
    assert_eq!(run("a  {{- .N -}}  \n b"), "a3b");
    assert_eq!(run("a {{/* note */}} b"), "a  b");
    assert_eq!(run("a {{- /* note */ -}} b"), "ab");
    assert_eq!(run("{{-3}}"), "-3");
}

#[test]
fn control_structures() {
    assert_eq!(run("{{if .Empty}}y{{else}}n{{end}}"), "n");
    assert_eq!(
        run("{{if eq .N 1}}one{{else if eq .N 3}}three{{else}}other{{end}}"),
        "three"
    );
    assert_eq!(run("{{with .Meta}}{{.title}}{{end}}"), "Hello <world>");
    assert_eq!(run("{{with .Empty}}x{{else}}none{{end}}"), "none");
    assert_eq!(run("{{range .Items}}<{{.}}>{{end}}"), "<a><b><c>");
    assert_eq!(
        run("{{range $i, $e := .Items}}{{$i}}={{$e}} {{end}}"),
        "0=a 1=b 2=c "
    );
    assert_eq!(run("{{range $k, $v := .Meta}}{{$k}};{{end}}"), "title;z;");
    assert_eq!(run("{{range .Nope}}x{{else}}empty{{end}}"), "empty");
    assert_eq!(
        run("{{range .Items}}{{if eq . \"b\"}}{{break}}{{end}}{{.}}{{end}}"),
        "a"
    );
    assert_eq!(
        run("{{range .Items}}{{if eq . \"b\"}}{{continue}}{{end}}{{.}}{{end}}"),
        "ac"
    );
    assert_eq!(run("{{range 3}}{{.}}{{end}}"), "012");
}

#[test]
fn variables_and_pipelines() {
    assert_eq!(run("{{$x := .N}}{{$x}}"), "3");
    assert_eq!(run("{{$x := 1}}{{if true}}{{$x = 2}}{{end}}{{$x}}"), "2");
    assert_eq!(run("{{.Name | printf \"%s!\"}}"), "Dwaar!");
    assert_eq!(run("{{.Name | len}}"), "5");
    assert_eq!(run("{{(index .Items 1) | printf \"%q\"}}"), "\"b\"");
    assert_eq!(run("{{range .Items}}{{$.Name}}{{end}}"), "DwaarDwaarDwaar");
    assert!(fails("{{$undefined}}").contains("undefined variable"));
}

#[test]
fn defines_templates_and_blocks() {
    assert_eq!(
        run(r#"{{define "x"}}[{{.}}]{{end}}{{template "x" .Name}}{{template "x" 2}}"#),
        "[Dwaar][2]"
    );
    assert_eq!(run(r#"{{block "b" .N}}<{{.}}>{{end}}"#), "<3>");
    assert!(fails(r#"{{template "nope"}}"#).contains("no such template"));
}

#[test]
fn builtin_functions() {
    assert_eq!(run("{{html .Meta.title}}"), "Hello &lt;world&gt;");
    assert_eq!(run(r#"{{js "a'b<"}}"#), r"a\'b\u003C");
    assert_eq!(run(r#"{{urlquery "a b&c"}}"#), "a+b%26c");
    assert_eq!(run(r#"{{print 1 2 "x" 3}}"#), "1 2x3");
    assert_eq!(run(r#"{{println "a" 1}}"#), "a 1\n");
    assert_eq!(
        run(r#"{{printf "%5d|%-4s|%.2f|%x|%v|%05d|%t" 42 "ab" 3.14159 255 .Items -7 true}}"#),
        "   42|ab  |3.14|ff|[a b c]|-0007|true"
    );
    assert_eq!(run(r#"{{printf "%d %s"  1}}"#), "1 %!s(MISSING)");
    assert_eq!(
        run(r#"{{printf "%T %T %T" 1 "s" .Items}}"#),
        "int string []interface {}"
    );
    assert_eq!(run(r#"{{printf "%d" "x"}}"#), "%!d(string=x)");
    assert_eq!(run("{{and 1 0 2}} {{or 0 \"\" 5}} {{not 0}}"), "0 5 true");
    assert_eq!(
        run("{{lt 1 2}} {{ge 2.5 2}} {{ne \"a\" \"b\"}} {{eq 3 2 3}} {{eq 1 2 3}}"),
        "true true true true false"
    );
    assert_eq!(
        run(r#"{{slice "hello" 1 3}} {{index .Meta "z"}} {{len .Items}}"#),
        "el 1 3"
    );
    // `and` stops at the first false value: the failing call is never made.
    assert_eq!(run("{{and false (index .Items 9)}}"), "false");
}

#[test]
fn errors_name_their_line_and_never_panic() {
    assert!(fails("a\n{{if}}").contains('2'));
    assert!(fails("{{nosuchfunc 1}}").contains("not defined"));
    assert!(fails("{{.N.x}}").contains("can't evaluate field x"));
    assert!(fails("{{end}}").contains("unexpected"));
    assert!(fails("{{if 1}}x").contains("EOF"));
    assert!(fails("{{index .Items 9}}").contains("out of range"));
    assert!(fails("{{.Name 1}}").contains("arguments"));
    for junk in [
        "{{",
        "{{\"",
        "{{(",
        "{{)}}",
        "{{range $a, $b := 1}}",
        "{{$x := }}",
        "{{|}}",
        "{{define}}",
    ] {
        let _ = Engine::new().render("t", junk, Value::Nil);
    }
}

#[test]
fn custom_delimiters_and_functions() {
    let mut e = Engine::new();
    e.delims("[[", "]]");
    e.func("shout", |_, a| {
        Ok(Value::from(a[0].to_text().to_uppercase()))
    });
    assert_eq!(
        e.render("t", "{{x}} [[ .Name | shout ]]", data())
            .unwrap_or_default(),
        "{{x}} DWAAR"
    );
}

#[test]
fn objects_have_fields_and_methods() {
    struct Req;
    impl Object for Req {
        fn get(&self, name: &str) -> Option<Result<Value, Error>> {
            match name {
                "Method" => Some(Ok(Value::from("GET"))),
                _ => None,
            }
        }
        fn call(&self, name: &str, args: &[Value]) -> Option<Result<Value, Error>> {
            match name {
                "Cookie" => Some(Ok(Value::from(format!("c:{}", args[0].to_text())))),
                _ => None,
            }
        }
    }
    let dot = Value::Object(std::rc::Rc::new(Req));
    let out = Engine::new()
        .render(
            "t",
            r#"{{.Method}} {{.Cookie "sid"}} {{"x" | .Cookie}}"#,
            dot,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out, "GET c:sid c:x");
}
