from modeling_langbridge.cli import main


def test_quickstart_composes_a_folder_and_answers_an_image_prompt(tmp_path, capsys):
    assert main(["quickstart", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "Q: What colour is the square?" in printed and "\nA: '" in printed
    assert (tmp_path / "model" / "model.safetensors").exists()
    assert (tmp_path / "model" / "modeling_langbridge.py").exists()
