//! Browser, operating system and device class from a `User-Agent`, by a few substring
//! rules: enough for a dashboard's shares, with nothing stored about the visitor.

/// (browser, os, device)
pub fn classify(ua: &str) -> (&'static str, &'static str, &'static str) {
    (browser(ua), os(ua), device(ua))
}

fn browser(ua: &str) -> &'static str {
    // Order matters: most browsers also claim to be Chrome, Safari and Mozilla.
    const RULES: &[(&str, &str)] = &[
        ("Edg/", "Edge"),
        ("EdgA/", "Edge"),
        ("OPR/", "Opera"),
        ("Opera", "Opera"),
        ("SamsungBrowser/", "Samsung Internet"),
        ("YaBrowser/", "Yandex"),
        ("Vivaldi/", "Vivaldi"),
        ("Firefox/", "Firefox"),
        ("FxiOS/", "Firefox"),
        ("CriOS/", "Chrome"),
        ("HeadlessChrome/", "Headless Chrome"),
        ("Chromium/", "Chromium"),
        ("Chrome/", "Chrome"),
        ("Safari/", "Safari"),
        ("curl/", "curl"),
        ("Wget/", "Wget"),
    ];
    RULES
        .iter()
        .find(|(needle, _)| ua.contains(needle))
        .map_or("Other", |r| r.1)
}

fn os(ua: &str) -> &'static str {
    const RULES: &[(&str, &str)] = &[
        ("Windows", "Windows"),
        ("iPhone", "iOS"),
        ("iPad", "iOS"),
        ("Android", "Android"),
        ("CrOS", "Chrome OS"),
        ("Mac OS X", "macOS"),
        ("Macintosh", "macOS"),
        ("Linux", "Linux"),
        ("FreeBSD", "FreeBSD"),
    ];
    RULES
        .iter()
        .find(|(needle, _)| ua.contains(needle))
        .map_or("Other", |r| r.1)
}

fn device(ua: &str) -> &'static str {
    if ua.contains("iPad")
        || ua.contains("Tablet")
        || (ua.contains("Android") && !ua.contains("Mobile"))
    {
        "Tablet"
    } else if ua.contains("Mobi") || ua.contains("iPhone") {
        "Mobile"
    } else {
        "Desktop"
    }
}

/// The screen-size class the script reports, from the viewport width in CSS pixels.
pub fn screen_class(width: u32) -> &'static str {
    match width {
        0 => "Unknown",
        1..=575 => "Mobile",
        576..=991 => "Tablet",
        992..=1439 => "Laptop",
        _ => "Desktop",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_agents() {
        let chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36";
        assert_eq!(classify(chrome), ("Chrome", "Windows", "Desktop"));
        let edge =
            "Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 Chrome/120.0 Safari/537.36 Edg/120.0";
        assert_eq!(classify(edge).0, "Edge");
        let iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Version/17.0 Mobile/15E148 Safari/604.1";
        assert_eq!(classify(iphone), ("Safari", "iOS", "Mobile"));
        let tab = "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 Chrome/120.0 Safari/537.36";
        assert_eq!(classify(tab), ("Chrome", "Android", "Tablet"));
        let ff = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0";
        assert_eq!(classify(ff), ("Firefox", "Linux", "Desktop"));
        assert_eq!(classify(""), ("Other", "Other", "Desktop"));
        assert_eq!(screen_class(390), "Mobile");
        assert_eq!(screen_class(1920), "Desktop");
    }
}
