//! `piko completion <shell>`: scripts a shell loads and completes Piko's dotted flags with.

use tokio::process::Command;

#[tokio::test]
async fn bash_completes_subcommands_and_dotted_flags() {
    let output = Command::new(env!("CARGO_BIN_EXE_piko"))
        .args(["completion", "bash"])
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    let script = String::from_utf8(output.stdout).unwrap();
    // Load the script in a real bash and ask it what it would complete.
    let complete = |words: &str| {
        format!(
            "{script}\nCOMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
             _piko piko \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\""
        )
    };
    let run = async |words: &str| {
        let output = Command::new("bash")
            .args(["-c", &complete(words)])
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let words = run("piko se").await;
    assert_eq!(words.trim(), "server");
    let words = run("piko server --proxy.b").await;
    assert_eq!(words.trim(), "--proxy.bind-addr");
    let words = run("piko server status cl").await;
    assert_eq!(words.trim(), "cluster");
}

#[tokio::test]
async fn every_shell_gets_a_script_and_others_are_refused() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let output = Command::new(env!("CARGO_BIN_EXE_piko"))
            .args(["completion", shell])
            .output()
            .await
            .unwrap();
        assert!(output.status.success(), "{shell}");
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("proxy.bind-addr"),
            "{shell}"
        );
    }
    let output = Command::new(env!("CARGO_BIN_EXE_piko"))
        .args(["completion", "tcsh"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}
